//! One training step of the language model on the GPU, as one CUDA graph: the gradient plan
//! (forward and backward through the loss), the global gradient norm and clipping factor, and
//! Adam, all on device buffers allocated once.
//!
//! The parameters live in the gradient plan's input buffers and are updated there by Adam; the
//! gradients are read where the plan leaves them; the moments are buffers of their own. Every
//! scalar that changes between steps (the dropout seed, Adam's step size and bias correction)
//! is read from device memory, written before each replay, so the graph is captured once. The
//! arithmetic is the CPU's (`train::optim`): Adam's per-element roundings, the sum of squares in
//! f64, the clipping factor's formula.

use crate::backend::cuda::runtime::{Gpu, GpuPlan, drv};
use crate::error::Error;
use crate::train::model::{ModelConfig, TrainGraph};
use crate::train::optim::Adam;
use cudarc::driver::{CudaFunction, CudaGraph, CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};

const BLOCK: u32 = 256;

/// The protocol's training step on a device.
pub struct GpuStep {
    pub plan: GpuPlan,
    /// Parameters: inputs `2..2 + np` of the gradient plan (after ids and targets).
    np: usize,
    /// Each parameter's length and the gradient plan's output holding its gradient.
    lens: Vec<usize>,
    grad_out: Vec<usize>,
    m: Vec<CudaSlice<f32>>,
    v: Vec<CudaSlice<f32>>,
    sumsq: CudaSlice<f64>,
    norm: CudaSlice<f64>,
    hyper: CudaSlice<f32>,
    adam: CudaFunction,
    sum_squares: CudaFunction,
    clip: CudaFunction,
    graph: Option<CudaGraph>,
    /// Adam's constants and step count, as the CPU's (its moments are on the device; the host
    /// vectors of this value stay empty).
    pub opt: Adam,
    pub max_norm: f64,
}

fn grid(n: usize) -> u32 {
    (n.div_ceil(BLOCK as usize)).clamp(1, 65_535) as u32
}

impl GpuStep {
    /// Loads the training graph `tg` with the initial parameters `params` (in the forward
    /// diagram's parameter order).
    pub fn new(
        gpu: &Gpu,
        tg: &TrainGraph,
        params: &[Vec<f32>],
        max_norm: f64,
    ) -> Result<GpuStep, Error> {
        let f = &tg.forward;
        let plan = crate::lir::Plan::new(&tg.gradient.diagram, &f.axes, &f.sizes)?;
        let np = f.params.len();
        if params.len() != np {
            return Err(Error::Device(format!(
                "{} parameters given, the model has {np}",
                params.len()
            )));
        }
        let mut gp = GpuPlan::new(gpu, &plan, "LM training step", Default::default())?;
        for (k, p) in params.iter().enumerate() {
            gp.set_input(gpu, 2 + k, p)?;
        }
        // The loss seed (the last input) is 1.
        gp.set_input(gpu, 2 + np, &[1.0])?;
        let grad_out = (0..np)
            .map(|k| {
                tg.gradient.grad_of[2 + k]
                    .ok_or_else(|| Error::Plan("a parameter has no gradient output".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let lens: Vec<usize> = params.iter().map(Vec::len).collect();
        let st = &gpu.stream;
        let zeros = |n: usize| st.alloc_zeros::<f32>(n.max(1)).map_err(drv);
        let m = lens
            .iter()
            .map(|n| zeros(*n))
            .collect::<Result<Vec<_>, _>>()?;
        let v = lens
            .iter()
            .map(|n| zeros(*n))
            .collect::<Result<Vec<_>, _>>()?;
        let (_, src) = crate::backend::cuda::kernels::modules()
            .into_iter()
            .find(|(n, _)| *n == "adam.cu")
            .ok_or_else(|| Error::Device("kernels/adam.cu is not in the binary".into()))?;
        let module = gpu.load(&src, "adam.cu")?;
        let func = |name: &str| module.load_function(name).map_err(drv);
        Ok(GpuStep {
            plan: gp,
            np,
            lens: lens.clone(),
            grad_out,
            m,
            v,
            sumsq: st.alloc_zeros::<f64>(1).map_err(drv)?,
            norm: st.alloc_zeros::<f64>(1).map_err(drv)?,
            hyper: st.alloc_zeros::<f32>(6).map_err(drv)?,
            adam: func("diagc_adam_dev")?,
            sum_squares: func("diagc_sum_squares")?,
            clip: func("diagc_clip_factor")?,
            graph: None,
            opt: Adam::new(&[]),
            max_norm,
        })
    }

    /// Bytes of device memory held: the plan's, the moments and the scalars.
    pub fn bytes(&self) -> usize {
        self.plan.bytes + 8 * self.lens.iter().sum::<usize>()
    }

    /// Copies a batch (token ids and targets, as f32, in the plan's layout) to the device.
    pub fn set_batch(&mut self, gpu: &Gpu, ids: &[f32], targets: &[f32]) -> Result<(), Error> {
        self.plan.set_input(gpu, 0, ids)?;
        self.plan.set_input(gpu, 1, targets)
    }

    /// Enqueues clipping and Adam after the plan.
    fn enqueue_update(&mut self, gpu: &Gpu) -> Result<(), Error> {
        let st = &gpu.stream;
        st.memset_zeros(&mut self.sumsq).map_err(drv)?;
        let sumsq = self.sumsq.device_ptr(st).0;
        let norm = self.norm.device_ptr(st).0;
        let hyper = self.hyper.device_ptr(st).0;
        let cfg = |n: usize| LaunchConfig {
            grid_dim: (grid(n), 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut grads = Vec::with_capacity(self.np);
        for (k, out) in self.grad_out.iter().enumerate() {
            let (g, len) = self
                .plan
                .output_ptr(gpu, *out)
                .ok_or_else(|| Error::Device("a gradient output is missing".into()))?;
            if len != self.lens[k] {
                return Err(Error::Device(format!(
                    "parameter {k}: {} elements, its gradient {len}",
                    self.lens[k]
                )));
            }
            grads.push(g);
            let n = len as u64;
            let mut b = st.launch_builder(&self.sum_squares);
            b.arg(&grads[k]).arg(&n).arg(&sumsq);
            // SAFETY: `diagc_sum_squares(const float*, unsigned long long, double*)` on a
            // gradient of `n` elements and the one-double accumulator.
            unsafe { b.launch(cfg(len)) }.map_err(drv)?;
        }
        let mut b = st.launch_builder(&self.clip);
        b.arg(&sumsq).arg(&self.max_norm).arg(&hyper).arg(&norm);
        // SAFETY: `diagc_clip_factor(const double*, double, float*, double*)`, one thread.
        unsafe {
            b.launch(LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (1, 1, 1),
                shared_mem_bytes: 0,
            })
        }
        .map_err(drv)?;
        for (k, g) in grads.iter().enumerate() {
            let p = self
                .plan
                .input_ptr(gpu, 2 + k)
                .ok_or_else(|| Error::Device("a parameter input is missing".into()))?;
            let (m, v) = (self.m[k].device_ptr(st).0, self.v[k].device_ptr(st).0);
            let n = self.lens[k] as u64;
            let mut b = st.launch_builder(&self.adam);
            b.arg(&p).arg(g).arg(&m).arg(&v).arg(&n).arg(&hyper);
            // SAFETY: `diagc_adam_dev(float*, const float*, float*, float*, unsigned long long,
            // const float*)` on four buffers of `n` elements and the six scalars.
            unsafe { b.launch(cfg(self.lens[k])) }.map_err(drv)?;
        }
        Ok(())
    }

    /// One training step with learning rate `lr` and dropout seed `seed`: the whole step is
    /// one CUDA graph, captured on the first call. Waits for it and checks the error word.
    pub fn step(&mut self, gpu: &Gpu, lr: f64, seed: u64) -> Result<(), Error> {
        self.plan.set_run(gpu, true, seed)?;
        // Adam's scalars, computed as `Adam::update_scaled` does (k is the clip kernel's).
        self.opt.step += 1;
        let t = self.opt.step as i32;
        let (b1, b2) = (self.opt.beta1, self.opt.beta2);
        let c1 = 1.0 - b1.powi(t);
        let c2 = 1.0 - b2.powi(t);
        let hyper = [
            1.0f32,
            b1 as f32,
            b2 as f32,
            (lr / c1) as f32,
            c2.sqrt() as f32,
            self.opt.eps as f32,
        ];
        gpu.stream
            .memcpy_htod(&hyper, &mut self.hyper)
            .map_err(drv)?;
        if self.graph.is_none() {
            let graph = gpu.capture(|| {
                self.plan.enqueue(gpu)?;
                self.enqueue_update(gpu)
            })?;
            self.graph = Some(graph);
        }
        if let Some(g) = &self.graph {
            g.launch().map_err(drv)?;
        }
        self.plan.check(gpu)
    }

    /// The loss of the last step (the gradient plan's first output).
    pub fn loss(&self, gpu: &Gpu) -> Result<f32, Error> {
        Ok(self
            .plan
            .output(gpu, 0)?
            .first()
            .copied()
            .unwrap_or(f32::NAN))
    }

    /// The global gradient norm of the last step (before clipping).
    pub fn grad_norm(&self, gpu: &Gpu) -> Result<f64, Error> {
        let mut h = [0f64];
        gpu.stream.memcpy_dtoh(&self.norm, &mut h).map_err(drv)?;
        gpu.synchronize()?;
        Ok(h[0])
    }

    /// Makes the device state the host's: parameters, Adam's moments and step count.
    pub fn load_state(&mut self, gpu: &Gpu, params: &[Vec<f32>], adam: &Adam) -> Result<(), Error> {
        if params.len() != self.np || adam.m.len() != self.np || adam.v.len() != self.np {
            return Err(Error::Device(
                "the state has another number of parameters".into(),
            ));
        }
        for (k, p) in params.iter().enumerate() {
            self.plan.set_input(gpu, 2 + k, p)?;
            if adam.m[k].len() != self.lens[k] || adam.v[k].len() != self.lens[k] {
                return Err(Error::Device(format!(
                    "parameter {k}: the moments have another length"
                )));
            }
            gpu.stream
                .memcpy_htod(&adam.m[k], &mut self.m[k])
                .map_err(drv)?;
            gpu.stream
                .memcpy_htod(&adam.v[k], &mut self.v[k])
                .map_err(drv)?;
        }
        self.opt.step = adam.step;
        gpu.synchronize()
    }

    /// Copies the device state to the host: parameters, Adam's moments and step count.
    pub fn store_state(
        &self,
        gpu: &Gpu,
        params: &mut [Vec<f32>],
        adam: &mut Adam,
    ) -> Result<(), Error> {
        for (k, param) in params.iter_mut().enumerate().take(self.np) {
            let mut p = self.plan.input(gpu, 2 + k)?;
            p.truncate(self.lens[k]);
            *param = p;
            let (mut m, mut v) = (vec![0f32; self.m[k].len()], vec![0f32; self.v[k].len()]);
            gpu.stream.memcpy_dtoh(&self.m[k], &mut m).map_err(drv)?;
            gpu.stream.memcpy_dtoh(&self.v[k], &mut v).map_err(drv)?;
            gpu.synchronize()?;
            m.truncate(self.lens[k]);
            v.truncate(self.lens[k]);
            adam.m[k] = m;
            adam.v[k] = v;
        }
        adam.step = self.opt.step;
        Ok(())
    }

    /// The current parameters, copied to the host.
    pub fn params(&self, gpu: &Gpu) -> Result<Vec<Vec<f32>>, Error> {
        (0..self.np)
            .map(|k| {
                let mut p = self.plan.input(gpu, 2 + k)?;
                p.truncate(self.lens[k]);
                Ok(p)
            })
            .collect()
    }
}

/// Times `steps` training steps of the LM of `cfg` on the GPU (after two warm-up steps, the
/// first of which captures the graph): the median seconds of a whole step (forward, backward,
/// clipping, Adam), the median seconds of forward+backward alone (the plan's own graph), and
/// the device memory the step holds. With `fuse_attention` (what `diagc train --device cuda`
/// runs), each layer's causal attention is one box (`ir::fuse`) on the hand-written kernels.
pub fn bench(
    gpu: &Gpu,
    cfg: &ModelConfig,
    steps: usize,
    seed: u64,
    fuse_attention: bool,
) -> Result<(f64, f64, usize), Error> {
    use std::time::Instant;
    let tg = crate::train::model::train_graph_with(cfg, fuse_attention)?;
    let f = &tg.forward;
    use crate::backend::cpu::harness;
    let inputs: Vec<Vec<f32>> = harness::to_f32(&harness::random_inputs(f, seed));
    let np = f.params.len();
    let mut s = GpuStep::new(gpu, &tg, &inputs[2..2 + np], 1.0)?;
    s.set_batch(gpu, &inputs[0], &inputs[1])?;
    use crate::train::bench::median;
    let mut whole = Vec::new();
    for k in 0..steps + 2 {
        gpu.synchronize()?;
        let t0 = Instant::now();
        s.step(gpu, 1e-4, seed.wrapping_add(k as u64))?;
        if k >= 2 {
            whole.push(t0.elapsed().as_secs_f64());
        }
    }
    let mut fb = Vec::new();
    for k in 0..steps + 1 {
        gpu.synchronize()?;
        let t0 = Instant::now();
        s.plan.run_graph(gpu, true, seed.wrapping_add(k as u64))?;
        if k >= 1 {
            fb.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok((median(whole), median(fb), s.bytes()))
}
