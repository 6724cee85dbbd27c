//! Running instances on seeded random inputs, and checking gradients against finite differences.

use super::interp::{self, RunOptions};
use super::tensor::Tensor;
use crate::autodiff;
use crate::error::Error;
use crate::ir::instance::{Init, Instance};
use crate::ir::{AxisId, WireType};

/// A small seeded generator (splitmix64): reproducible inputs without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal draw (Box-Muller on two uniforms; the first of the pair).
    pub fn normal(&mut self) -> f64 {
        // 1 - u is in (0, 1]: its log is finite.
        let (u, v) = (1.0 - self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// A random tensor of a wire type: values uniform in [-1, 1), indices uniform over their axis.
pub fn random_tensor(inst: &Instance, ty: &WireType, rng: &mut Rng) -> Tensor {
    let shape = inst.shape(ty);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = match ty.index_of {
        Some(vocab) => (0..n).map(|_| rng.below(inst.size(vocab)) as f64).collect(),
        None => (0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect(),
    };
    Tensor::from_vec(ty.axes.clone(), &shape, v)
}

/// The instance's inputs: random data, and parameters drawn by their initialisation rule.
pub fn random_inputs(inst: &Instance, seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    let d = &inst.diagram;
    let mut out = Vec::with_capacity(d.inputs.len());
    for (k, w) in d.inputs.iter().enumerate() {
        let ty = &d.wire(*w).ty;
        if k < inst.data_inputs {
            out.push(random_tensor(inst, ty, &mut rng));
            continue;
        }
        let p = &inst.params[k - inst.data_inputs];
        let shape = inst.shape(ty);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = match p.init {
            Init::Uniform(b) => (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) * b).collect(),
            Init::Normal(sd) => (0..n).map(|_| rng.normal() * sd).collect(),
            Init::Constant(c) => vec![c; n],
        };
        out.push(Tensor::from_vec(ty.axes.clone(), &shape, v));
    }
    out
}

/// Tensors as the f32 buffers the fast executor (and the CUDA backend) take: each in its
/// wire's layout (row-major in its axis order).
pub fn to_f32(ts: &[Tensor]) -> Vec<Vec<f32>> {
    ts.iter()
        .map(|t| {
            t.data
                .as_standard_layout()
                .iter()
                .map(|x| *x as f32)
                .collect()
        })
        .collect()
}

/// Seeded inputs for an instance's forward plan and for its gradient plan, as f32 buffers:
/// the forward inputs ([`random_inputs`]), and the same followed by one random seed per value
/// output (what [`crate::autodiff::gradient`]'s diagram takes).
pub fn plan_inputs(inst: &Instance, seed: u64) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let inputs = to_f32(&random_inputs(inst, seed));
    let mut gin = inputs.clone();
    let mut rng = Rng::new(seed ^ 0xABCD);
    for w in &inst.diagram.outputs {
        let ty = &inst.diagram.wire(*w).ty;
        if ty.index_of.is_none() {
            gin.extend(to_f32(&[random_tensor(inst, ty, &mut rng)]));
        }
    }
    (inputs, gin)
}

/// Runs the instance on random inputs and parameters.
pub fn run_random(inst: &Instance, seed: u64, opts: RunOptions) -> Result<Vec<Tensor>, Error> {
    fits_in_memory(inst, 1)?;
    interp::run(
        &inst.diagram,
        &inst.axes,
        &inst.sizes,
        random_inputs(inst, seed),
        opts,
    )
}

/// Refuses, before anything is allocated, an instance whose values (8 bytes each, every wire
/// of the diagram, `copies` times: a gradient holds the forward values and as many again)
/// would not fit in the machine's available memory ([`crate::session::check_memory`]).
pub fn fits_in_memory(inst: &Instance, copies: u64) -> Result<(), Error> {
    let bytes = inst
        .value_elements()
        .and_then(|n| n.checked_mul(8 * copies));
    crate::session::check_memory(
        bytes,
        &format!(
            "running `{}` on the f64 reference interpreter",
            inst.diagram.name
        ),
    )
}

/// The outcome of a gradient check.
#[derive(Debug, Clone)]
pub struct GradReport {
    /// The largest error found, `|analytic - numeric| / max(|analytic|, |numeric|, 1)`.
    pub worst: f64,
    /// Which input and element gave it.
    pub worst_at: String,
    /// Per input: its name, how many elements were checked, and its worst error.
    pub per_input: Vec<(String, usize, f64)>,
}

/// Compares every gradient of the instance (inputs and parameters) with central finite
/// differences, in f64. The loss is `sum_k <seed_k, output_k>` with random seeds. Each input
/// has at most `samples` of its elements checked (chosen at random; all when it is smaller).
pub fn gradcheck(
    inst: &Instance,
    seed: u64,
    samples: usize,
    train: bool,
) -> Result<GradReport, Error> {
    let opts = RunOptions {
        train,
        seed,
        check_finite: false,
    };
    fits_in_memory(inst, 3)?;
    let f = &inst.diagram;
    let grad = autodiff::gradient(f)?;
    let inputs = random_inputs(inst, seed);
    let mut rng = Rng::new(seed.wrapping_add(1));
    let seeds: Vec<Tensor> = f
        .outputs
        .iter()
        .filter(|w| f.wire(**w).ty.index_of.is_none())
        .map(|w| random_tensor(inst, &f.wire(*w).ty, &mut rng))
        .collect();
    let mut gin = inputs.clone();
    gin.extend(seeds.iter().cloned());
    let outs = interp::run(&grad.diagram, &inst.axes, &inst.sizes, gin, opts)?;
    let loss = |ins: Vec<Tensor>| -> Result<f64, Error> {
        let ys = interp::run(f, &inst.axes, &inst.sizes, ins, opts)?;
        let mut total = 0.0;
        let values = ys
            .iter()
            .zip(&f.outputs)
            .filter(|(_, w)| f.wire(**w).ty.index_of.is_none())
            .map(|(y, _)| y);
        for (y, s) in values.zip(&seeds) {
            let y = y.clone().aligned(&s.axes);
            total += (&y.data * &s.data).sum();
        }
        Ok(total)
    };
    let h = 1e-6;
    let mut report = GradReport {
        worst: 0.0,
        worst_at: String::new(),
        per_input: Vec::new(),
    };
    for (k, w) in f.inputs.iter().enumerate() {
        let Some(gi) = grad.grad_of[k] else { continue };
        let name = f.input_names.get(k).cloned().unwrap_or_default();
        // A frozen tensor (`random[...]()`) has no gradient by definition (it reaches the
        // diagram through `stop_grad`), though the output depends on it: nothing to compare.
        if name.ends_with(".frozen") {
            continue;
        }
        let analytic = outs[gi].clone().aligned(&f.wire(*w).ty.axes);
        let analytic = analytic.data.as_standard_layout().into_owned();
        let base = inputs[k].data.as_standard_layout().into_owned();
        let n = base.len();
        let picks: Vec<usize> = if n <= samples {
            (0..n).collect()
        } else {
            (0..samples).map(|_| rng.below(n)).collect()
        };
        let mut worst_here: f64 = 0.0;
        for &i in &picks {
            let mut numeric = 0.0;
            for (sign, weight) in [(1.0, 1.0), (-1.0, -1.0)] {
                let mut ins = inputs.clone();
                let mut data = base.clone();
                data.as_slice_mut().expect("standard layout")[i] += sign * h;
                ins[k] = Tensor {
                    axes: inputs[k].axes.clone(),
                    data,
                };
                numeric += weight * loss(ins)?;
            }
            numeric /= 2.0 * h;
            let a = analytic.as_slice().expect("standard layout")[i];
            let err = (a - numeric).abs() / a.abs().max(numeric.abs()).max(1.0);
            if err > worst_here {
                worst_here = err;
            }
            if err >= report.worst {
                report.worst = err;
                report.worst_at = format!("{name}[{i}]: analytic {a:.6e}, numeric {numeric:.6e}");
            }
        }
        report.per_input.push((name, picks.len(), worst_here));
    }
    Ok(report)
}

/// A tensor as JSON: `{name, axes, shape, data}` with the data row-major in `axes` order.
pub fn tensor_json(inst: &Instance, name: &str, t: &Tensor) -> serde_json::Value {
    let data: Vec<f64> = t.data.as_standard_layout().iter().copied().collect();
    let axes: Vec<&str> = t.axes.iter().map(|a| inst.axes.name(*a)).collect();
    serde_json::json!({ "name": name, "axes": axes, "shape": t.data.shape(), "data": data })
}

/// Reads a tensor written by [`tensor_json`] (axes by name).
pub fn tensor_from_json(inst: &Instance, v: &serde_json::Value) -> Result<Tensor, Error> {
    let axes: Vec<crate::ir::AxisId> = v["axes"]
        .as_array()
        .ok_or_else(|| Error::Run("a tensor without axes".into()))?
        .iter()
        .map(|a| {
            let n = a.as_str().unwrap_or_default();
            inst.axes
                .lookup(n)
                .ok_or_else(|| Error::Run(format!("no axis `{n}`")))
        })
        .collect::<Result<_, _>>()?;
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .ok_or_else(|| Error::Run("a tensor without a shape".into()))?
        .iter()
        .map(|x| x.as_u64().unwrap_or(0) as usize)
        .collect();
    let data: Vec<f64> = v["data"]
        .as_array()
        .ok_or_else(|| Error::Run("a tensor without data".into()))?
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect();
    if data.len() != shape.iter().product::<usize>() || shape.len() != axes.len() {
        return Err(Error::Run("a tensor's data does not fit its shape".into()));
    }
    Ok(Tensor::from_vec(axes, &shape, data))
}

/// One run, recorded: inputs (data and parameters, by name), outputs, and the gradient of the
/// sum of all outputs with respect to every value input.
pub fn record(inst: &Instance, seed: u64, opts: RunOptions) -> Result<serde_json::Value, Error> {
    fits_in_memory(inst, 3)?;
    let f = &inst.diagram;
    let inputs = random_inputs(inst, seed);
    let grad = autodiff::gradient(f)?;
    let seeds: Vec<Tensor> = f
        .outputs
        .iter()
        .filter(|w| f.wire(**w).ty.index_of.is_none())
        .map(|w| {
            let ty = &f.wire(*w).ty;
            let shape = inst.shape(ty);
            Tensor::from_vec(ty.axes.clone(), &shape, vec![1.0; shape.iter().product()])
        })
        .collect();
    let mut gin = inputs.clone();
    gin.extend(seeds);
    let outs = interp::run(&grad.diagram, &inst.axes, &inst.sizes, gin, opts)?;
    let name = |k: usize| f.input_names.get(k).cloned().unwrap_or_default();
    let ins: Vec<serde_json::Value> = inputs
        .iter()
        .enumerate()
        .map(|(k, t)| tensor_json(inst, &name(k), t))
        .collect();
    let ys: Vec<serde_json::Value> = outs[..grad.forward_outputs]
        .iter()
        .enumerate()
        .map(|(k, t)| tensor_json(inst, &format!("output{k}"), t))
        .collect();
    let gs: Vec<serde_json::Value> = grad
        .grad_of
        .iter()
        .enumerate()
        .filter_map(|(k, g)| g.map(|g| tensor_json(inst, &name(k), &outs[g])))
        .collect();
    let sizes: serde_json::Map<String, serde_json::Value> = inst
        .axes
        .axes
        .iter()
        .enumerate()
        .filter(|(i, _)| inst.sizes[*i] > 0)
        .map(|(i, a)| (a.name.clone(), serde_json::json!(inst.sizes[i])))
        .collect();
    Ok(serde_json::json!({
        "diagram": f.name,
        "seed": seed,
        "train": opts.train,
        "sizes": sizes,
        "inputs": ins,
        "outputs": ys,
        "gradients": gs,
    }))
}

/// A dependence of an output position on a later input position, found by
/// [`causal_probe`].
#[derive(Clone, Debug, PartialEq)]
pub struct Leak {
    /// The output (by index) and the earlier position of it that changed.
    pub output: usize,
    pub at: usize,
    /// The data input (by index) and the later position of it that was changed.
    pub input: usize,
    pub from: usize,
    /// The largest change seen at `at`.
    pub change: f64,
}

/// The dynamic second line behind the static proof of [`crate::ir::causal`]: runs the instance
/// on seeded random inputs (dropout off), then, for every data input along `pos` and every
/// position `j` of it, redraws that input's entries at `j` (another token for an index wire)
/// and runs it again. An output position `i < j` that changes by more than `1e-9` of the
/// output's scale depends on the future: the first such is returned. `None`: no dependence
/// seen on these inputs (evidence, not proof: the static analysis is the proof). The interpreter
/// runs `1 + n` times per input, `n` the size of `pos`.
pub fn causal_probe(inst: &Instance, pos: AxisId, seed: u64) -> Result<Option<Leak>, Error> {
    fits_in_memory(inst, 1)?;
    let run = |inputs: Vec<Tensor>| {
        interp::run(
            &inst.diagram,
            &inst.axes,
            &inst.sizes,
            inputs,
            RunOptions::default(),
        )
    };
    let base_inputs = random_inputs(inst, seed);
    let base = run(base_inputs.clone())?;
    let mut rng = Rng::new(seed ^ 0x5EED);
    let n = inst.size(pos);
    for (k, w) in inst.diagram.inputs[..inst.data_inputs].iter().enumerate() {
        let ty = &inst.diagram.wire(*w).ty;
        if !ty.has(pos) {
            continue;
        }
        for j in 1..n {
            let mut inputs = base_inputs.clone();
            let t = &mut inputs[k];
            let ax = t.pos(pos);
            for x in t.data.index_axis_mut(ndarray::Axis(ax), j).iter_mut() {
                *x = match ty.index_of {
                    // Another token: the next one, so that it always differs.
                    Some(v) => {
                        ((*x as usize + 1 + rng.below(inst.size(v).max(2) - 1))
                            % inst.size(v).max(1)) as f64
                    }
                    None => rng.uniform() * 2.0 - 1.0,
                };
            }
            let outs = run(inputs)?;
            for (o, (a, b)) in base.iter().zip(&outs).enumerate() {
                if !a.axes.contains(&pos) {
                    // An output without positions: any change is a dependence on `j`.
                    let change = max_change(&a.data.view(), &b.data.view());
                    if change > tolerance(a) {
                        return Ok(Some(Leak {
                            output: o,
                            at: 0,
                            input: k,
                            from: j,
                            change,
                        }));
                    }
                    continue;
                }
                let (pa, pb) = (a.pos(pos), b.pos(pos));
                for i in 0..j {
                    let change = max_change(
                        &a.data.index_axis(ndarray::Axis(pa), i),
                        &b.data.index_axis(ndarray::Axis(pb), i),
                    );
                    if change > tolerance(a) {
                        return Ok(Some(Leak {
                            output: o,
                            at: i,
                            input: k,
                            from: j,
                            change,
                        }));
                    }
                }
            }
        }
    }
    Ok(None)
}

fn max_change(a: &ndarray::ArrayViewD<f64>, b: &ndarray::ArrayViewD<f64>) -> f64 {
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| {
            if x.is_nan() != y.is_nan() {
                f64::INFINITY
            } else if x == y || (x.is_nan() && y.is_nan()) {
                0.0
            } else {
                (x - y).abs()
            }
        })
        .fold(0.0, f64::max)
}

fn tolerance(t: &Tensor) -> f64 {
    let scale = t
        .data
        .iter()
        .filter(|x| x.is_finite())
        .fold(0.0_f64, |m, x| m.max(x.abs()));
    1e-9 * (1.0 + scale)
}
