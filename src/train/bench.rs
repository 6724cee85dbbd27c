//! `diagc bench`: one training step of the LM at the protocol's sizes on the fast CPU executor
//! (forward and backward through the loss, gradient clipping and the Adam update), timed over
//! several steps; optionally the PyTorch script of `bench/` in the same run, for the ratio.

use super::model::{ModelConfig, train_graph_with};
use super::optim::{Adam, noam};
use super::run::cpu_step;
use crate::backend::cpu::exec::{Plan, PlanOptions, by_kind};
use crate::backend::cpu::harness;
use crate::backend::cpu::interp::RunOptions;
use crate::error::Error;
use std::fmt::Write;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub params: usize,
    /// Median seconds of forward + backward.
    pub fwd_bwd: f64,
    /// Median seconds of the whole step (with clipping and Adam).
    pub step: f64,
    pub tokens_per_step: usize,
    /// Planned workspace of the gradient diagram (bytes), and what it would be without reuse.
    pub workspace: usize,
    pub workspace_no_reuse: usize,
    /// Parameters, gradients and the two Adam moments (bytes).
    pub state: usize,
    /// Time per kind of kernel in one forward+backward (profiled run), largest first.
    pub profile: Vec<(&'static str, f64, usize)>,
    /// Every step of that run, slowest first: the boxes it computes, its kind, seconds, and
    /// the floating-point operations of a product (0 otherwise).
    pub steps: Vec<(String, &'static str, f64, u64)>,
    /// Median seconds of clipping and the Adam update.
    pub update: f64,
    /// The machine's ceiling, measured in the same run: contiguous products (a large square
    /// one and the LM's own shapes) through the same `gemm` call, with their GFLOP/s.
    pub ceiling: Vec<(String, f64)>,
    /// Every product of the profiled forward+backward, slowest first, beside the same product
    /// run alone.
    pub products: Vec<ProductTime>,
}

/// One product of the step, and the same product alone on fresh buffers (best of 5), in its
/// own layout and row-major: the step's time against the ceiling splits into what the shape
/// costs (row-major alone against the ceiling), what the layout costs (own layout against
/// row-major, alone) and what running inside the step costs (the step against alone: caches
/// the neighbouring steps filled, the hand-off between them).
#[derive(Debug, Clone)]
pub struct ProductTime {
    pub label: String,
    /// Seconds in the step (the fastest of the profiled runs).
    pub secs: f64,
    pub flops: u64,
    /// Products in the batch, and `[m, n, k]` of each.
    pub batch: usize,
    pub mnk: [usize; 3],
    /// How `[a, b, c]` are stored: `N` row-major, `T` column-major (read transposed), `S`
    /// strided both ways.
    pub layout: [char; 3],
    /// GFLOP/s alone in its own layout (`S` timed as `T`) and alone row-major; 0 for the
    /// matrix-vector and outer products, which do not go through the GEMM.
    pub alone: f64,
    pub alone_row_major: f64,
}

impl ProductTime {
    fn new(label: &str, secs: f64, g: &crate::backend::cpu::exec::kernels::Gemm) -> ProductTime {
        let code = |[rs, cs]: [isize; 2]| match (rs, cs) {
            (_, 1) => 'N',
            (1, _) => 'T',
            _ => 'S',
        };
        ProductTime {
            label: label.to_string(),
            secs,
            flops: g.flops(),
            batch: g.batch.len(),
            mnk: [g.m, g.n, g.k],
            layout: [code(g.a), code(g.b), code(g.c)],
            alone: 0.0,
            alone_row_major: 0.0,
        }
    }

    /// Times the product alone, in its layout and row-major, unless a product of `seen` has
    /// the same batch, shape and layout (then its rates are taken).
    fn measure(&mut self, seen: &mut Vec<ProductTime>) {
        if self.mnk[1] == 1 || self.mnk[2] == 1 {
            return;
        }
        let same =
            |s: &&ProductTime| (s.batch, s.mnk, s.layout) == (self.batch, self.mnk, self.layout);
        if let Some(s) = seen.iter().find(same) {
            (self.alone, self.alone_row_major) = (s.alone, s.alone_row_major);
            return;
        }
        use crate::backend::cpu::exec::kernels::isolated_gemm_rate;
        let t = self.layout.map(|c| c != 'N');
        self.alone = isolated_gemm_rate(self.batch, self.mnk, t, 5);
        self.alone_row_major = if t == [false; 3] {
            self.alone
        } else {
            isolated_gemm_rate(self.batch, self.mnk, [false; 3], 5)
        };
        seen.push(self.clone());
    }
}

impl BenchReport {
    /// The best rate of [`BenchReport::ceiling`] (GFLOP/s).
    pub fn ceiling_rate(&self) -> f64 {
        self.ceiling.iter().map(|c| c.1).fold(0.0, f64::max)
    }
}

/// The contiguous products `diagc bench` takes the machine's ceiling from: a 1024-square
/// product and the LM's own shapes (tokens x d_model by d_model x {vocab, d_ff, d_model}).
pub fn ceiling(cfg: &ModelConfig) -> Vec<(String, f64)> {
    let t = cfg.batch * cfg.bptt;
    let shapes = [
        ("square".to_string(), 1024, 1024, 1024),
        ("output layer".to_string(), t, cfg.vocab, cfg.d_model),
        ("feed-forward".to_string(), t, cfg.d_ff, cfg.d_model),
        ("projection".to_string(), t, cfg.d_model, cfg.d_model),
    ];
    shapes
        .into_iter()
        .filter(|(_, m, n, k)| *m > 0 && *n > 0 && *k > 0)
        .map(|(name, m, n, k)| {
            let rate = crate::backend::cpu::exec::kernels::contiguous_gemm_rate(m, n, k, 5);
            (format!("{name} {m}x{k} by {k}x{n}"), rate)
        })
        .collect()
}

impl BenchReport {
    pub fn step_tokens_per_s(&self) -> f64 {
        self.tokens_per_step as f64 / self.step
    }
    pub fn fwd_bwd_tokens_per_s(&self) -> f64 {
        self.tokens_per_step as f64 / self.fwd_bwd
    }
}

/// The median of durations, in seconds.
fn median_secs(v: Vec<Duration>) -> f64 {
    median(v.iter().map(Duration::as_secs_f64).collect())
}

/// A training step ready to be timed: the plan, its workspace, seeded inputs and parameters, and
/// Adam's state. [`bench`] times one; the sweep's timing phase alternates two.
pub struct Prepared {
    pub plan: Plan,
    ws: crate::backend::cpu::exec::Workspace,
    data: Vec<Vec<f32>>,
    params: Vec<Vec<f32>>,
    adam: Adam,
    grad_of: Vec<usize>,
    d_model: usize,
    seed: u64,
    /// Tokens of one step (batch x window).
    pub tokens_per_step: usize,
}

impl Prepared {
    /// Plans the training step of `cfg` (with `fuse_attention`, its causal attention as one box
    /// per layer).
    pub fn new(
        cfg: &ModelConfig,
        seed: u64,
        jit: bool,
        fuse_attention: bool,
    ) -> Result<Prepared, Error> {
        let tg = train_graph_with(cfg, fuse_attention)?;
        let f = &tg.forward;
        let plan =
            Plan::with_options(&tg.gradient.diagram, &f.axes, &f.sizes, PlanOptions { jit })?;
        let ws = plan.workspace();
        let mut data = harness::to_f32(&harness::random_inputs(f, seed));
        let np = f.params.len();
        let grad_of: Vec<usize> = (0..np)
            .map(|k| tg.gradient.grad_of[2 + k])
            .collect::<Option<_>>()
            .ok_or_else(|| Error::Plan("a parameter has no gradient".into()))?;
        let params: Vec<Vec<f32>> = data.drain(2..2 + np).collect();
        let lengths: Vec<usize> = params.iter().map(Vec::len).collect();
        Ok(Prepared {
            plan,
            ws,
            data,
            params,
            adam: Adam::new(&lengths),
            grad_of,
            d_model: cfg.d_model,
            seed,
            tokens_per_step: cfg.batch * cfg.bptt,
        })
    }

    /// Parameters of the model.
    pub fn parameters(&self) -> usize {
        self.params.iter().map(Vec::len).sum()
    }

    /// Planned bytes: the workspace, and the parameters, gradients and Adam's two moments.
    pub fn planned_bytes(&self) -> u64 {
        (self.plan.peak_bytes() + self.parameters() * 4 * 4) as u64
    }

    /// Runs `steps` whole training steps; returns each one's (forward + backward, whole step).
    pub fn time(&mut self, steps: usize) -> Result<Vec<(Duration, Duration)>, Error> {
        let mut out = Vec::with_capacity(steps);
        for _ in 0..steps {
            let s = self.adam.step;
            let t0 = Instant::now();
            let lr = noam(self.adam.step + 1, self.d_model, 4000, 1.0);
            let (_, t1) = cpu_step(
                (&self.plan, &mut self.ws, &self.grad_of),
                [&self.data[0], &self.data[1]],
                (&mut self.params, &mut self.adam),
                (self.seed.wrapping_add(s), lr, 1.0),
            )?;
            let t2 = Instant::now();
            out.push((t1 - t0, t2 - t0));
        }
        Ok(out)
    }
}

/// Times `steps` training steps (after one warm-up step). With `fuse_attention`, the model's
/// causal attention is one box per layer (`ir::fuse`).
pub fn bench(
    cfg: &ModelConfig,
    steps: usize,
    seed: u64,
    jit: bool,
    fuse_attention: bool,
) -> Result<BenchReport, Error> {
    let mut p = Prepared::new(cfg, seed, jit, fuse_attention)?;
    p.time(1)?;
    let times = p.time(steps)?;
    let fb: Vec<Duration> = times.iter().map(|t| t.0).collect();
    let full: Vec<Duration> = times.iter().map(|t| t.1).collect();
    let Prepared {
        plan,
        mut ws,
        data: flat,
        params,
        ..
    } = p;
    let (ids, targets) = (&flat[0], &flat[1]);
    let lengths: Vec<usize> = params.iter().map(Vec::len).collect();
    let nparams: usize = lengths.iter().sum();
    let one = [1.0f32];
    let mut refs: Vec<&[f32]> = vec![ids, targets];
    refs.extend(params.iter().map(Vec::as_slice));
    refs.push(&one);
    let opts = RunOptions {
        train: true,
        seed,
        check_finite: false,
    };
    // The profile: every step's fastest of three runs (single runs of a millisecond-long step
    // differ by 10% or more on a shared machine).
    let mut timed = plan
        .run_timed(&mut ws, &refs, opts)
        .map_err(|e| Error::Plan(e.to_string()))?;
    for _ in 0..2 {
        let again = plan
            .run_timed(&mut ws, &refs, opts)
            .map_err(|e| Error::Plan(e.to_string()))?;
        for (t, a) in timed.iter_mut().zip(again) {
            t.time = t.time.min(a.time);
        }
    }
    let profile = by_kind(&timed)
        .into_iter()
        .map(|(k, d, n)| (k, d.as_secs_f64(), n))
        .collect();
    let mut steps: Vec<(String, &'static str, f64, u64)> = timed
        .iter()
        .map(|t| (t.label.to_string(), t.kind, t.time.as_secs_f64(), t.flops))
        .collect();
    steps.sort_by(|a, b| b.2.total_cmp(&a.2));
    let mut products: Vec<ProductTime> = timed
        .iter()
        .filter_map(|t| Some(ProductTime::new(t.label, t.time.as_secs_f64(), t.gemm?)))
        .collect();
    products.sort_by(|a, b| b.secs.total_cmp(&a.secs));
    let mut seen = Vec::new();
    for p in &mut products {
        p.measure(&mut seen);
    }
    let update = median_secs(full.iter().zip(&fb).map(|(a, b)| *a - *b).collect());
    let ceiling = ceiling(cfg);
    Ok(BenchReport {
        params: nparams,
        fwd_bwd: median_secs(fb),
        step: median_secs(full),
        tokens_per_step: cfg.batch * cfg.bptt,
        workspace: plan.peak_bytes(),
        workspace_no_reuse: plan.no_reuse_bytes(),
        state: nparams * 4 * 4,
        profile,
        steps,
        update,
        ceiling,
        products,
    })
}

/// The PyTorch peer of `diagc bench`: `given` (the `--pytorch-script` flag), else
/// `DIAGC_PYTORCH_SCRIPT` when set, else `bench/pytorch_lm_step.py` of the source tree diagc
/// was built from (never a path relative to the working directory).
pub fn pytorch_script(given: Option<&std::path::Path>) -> std::path::PathBuf {
    if let Some(p) = given {
        return p.to_path_buf();
    }
    match std::env::var_os("DIAGC_PYTORCH_SCRIPT") {
        Some(p) => p.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/pytorch_lm_step.py"),
    }
}

/// Checks that the PyTorch peer `script` exists (before a benchmark spends its time).
pub fn require_script(script: &std::path::Path) -> Result<(), Error> {
    if script.is_file() {
        Ok(())
    } else {
        Err(Error::External(format!(
            "the PyTorch peer {} is missing (give its path with --pytorch-script)",
            script.display()
        )))
    }
}

/// Runs the PyTorch peer `script` ([`pytorch_script`]) for `cfg` with `extra` arguments; its
/// JSON line.
pub fn run_pytorch(
    script: &std::path::Path,
    cfg: &ModelConfig,
    steps: usize,
    extra: &[&str],
) -> Result<serde_json::Value, Error> {
    require_script(script)?;
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(["--mech", &cfg.mech, "--layers", &cfg.layers.to_string()])
        .args([
            "--batch",
            &cfg.batch.to_string(),
            "--bptt",
            &cfg.bptt.to_string(),
        ])
        .args(["--steps", &steps.to_string(), "--json"])
        .args(extra)
        .output()
        .map_err(|e| Error::External(format!("cannot run python3: {e}")))?;
    if !out.status.success() {
        return Err(Error::External(format!(
            "the PyTorch side failed (is torch installed?): {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        )));
    }
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    serde_json::from_str(&line).map_err(|_| {
        Error::External(format!(
            "could not read the PyTorch script's output: {line}"
        ))
    })
}

/// The median of `v` (the mean of the middle two for an even count; NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One round of `bench --rounds`: diagc's tokens/s (forward+backward, whole step), and
/// PyTorch's when it ran.
pub type Round = (f64, f64, Option<(f64, f64)>);

/// The CPU benchmark's report of one round, as `diagc bench` prints it.
pub fn cpu_report(
    r: &BenchReport,
    cfg: &ModelConfig,
    (jit, fuse): (bool, bool),
    top: usize,
) -> String {
    let mut s = String::new();
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    writeln!(s,
        "diagc (CPU, f32, {}{}) {}, {} layer(s), batch {} x {}, {} parameters, {} threads available",
        if jit { "fused JIT kernels" } else { "no JIT" },
        if fuse { ", attention fused" } else { "" },
        cfg.mech,
        cfg.layers,
        cfg.batch,
        cfg.bptt,
        r.params,
        crate::backend::cpu::exec::kernels::cores()
    ).unwrap();
    writeln!(
        s,
        "  forward+backward:         {:8.0} tokens/s",
        r.fwd_bwd_tokens_per_s()
    )
    .unwrap();
    writeln!(
        s,
        "  whole step (+clip, Adam): {:8.0} tokens/s",
        r.step_tokens_per_s()
    )
    .unwrap();
    writeln!(s,
        "  memory: workspace {:.0} MiB (without reuse {:.0} MiB), parameters+gradients+Adam {:.0} MiB",
        mib(r.workspace),
        mib(r.workspace_no_reuse),
        mib(r.state)
    ).unwrap();
    writeln!(
        s,
        "  clipping + Adam: {:.1} ms; one forward+backward by kernel:",
        r.update * 1e3
    )
    .unwrap();
    for (kind, secs, n) in r.profile.iter().take(8) {
        writeln!(s, "    {kind:<20} {:8.1} ms  ({n} steps)", secs * 1e3).unwrap();
    }
    products_report(&mut s, r);
    if top > 0 {
        writeln!(s, "  the {} slowest steps:", top.min(r.steps.len())).unwrap();
    }
    for (label, kind, secs, flops) in r.steps.iter().take(top) {
        let rate = if *flops > 0 && *secs > 0.0 {
            format!("{:6.0} GFLOP/s", *flops as f64 / secs / 1e9)
        } else {
            String::new()
        };
        writeln!(
            s,
            "    {kind:<20} {:8.2} ms {rate:>14}  {label}",
            secs * 1e3
        )
        .unwrap();
    }
    s
}

/// The products of one forward+backward against the machine's ceiling: the ceiling's
/// measurements, the products' share of the time and their overall rate, the time outside
/// them, then every product, slowest first, with its GFLOP/s and fraction of the ceiling, its
/// shape and layout and its rate alone; and the products' distance from the ceiling split into
/// what their shapes, their layouts and the step around them cost.
fn products_report(s: &mut String, r: &BenchReport) {
    let ceiling = r.ceiling_rate();
    if ceiling <= 0.0 {
        return;
    }
    writeln!(
        s,
        "  the machine's ceiling (contiguous products, same gemm call and threads, best of 5):"
    )
    .unwrap();
    for (name, rate) in &r.ceiling {
        writeln!(s, "    {rate:6.0} GFLOP/s  {name}").unwrap();
    }
    let total: f64 = r.steps.iter().map(|x| x.2).sum();
    let ptime: f64 = r.products.iter().map(|p| p.secs).sum();
    let pflops: f64 = r.products.iter().map(|p| p.flops as f64).sum();
    if total <= 0.0 || r.products.is_empty() {
        return;
    }
    let overall = pflops / ptime.max(1e-12) / 1e9;
    writeln!(
        s,
        "  one forward+backward (profiled, each step the fastest of 3 runs, {:.1} ms): {} products \
         {:.1} ms ({:.0}%) at {:.0} GFLOP/s ({:.0}% of the ceiling); outside products {:.1} ms ({:.0}%)",
        total * 1e3,
        r.products.len(),
        ptime * 1e3,
        100.0 * ptime / total,
        overall,
        100.0 * overall / ceiling,
        (total - ptime) * 1e3,
        100.0 * (total - ptime) / total
    )
    .unwrap();
    writeln!(
        s,
        "  every product, slowest first: in the step (ms, GFLOP/s, of the ceiling); batch x m x n x k; \
         layout of a, b, c (N row-major, T transposed, S strided); GFLOP/s alone (best of 5), in that layout and row-major:"
    )
    .unwrap();
    let rate = |r: f64| {
        if r > 0.0 {
            format!("{r:6.0}")
        } else {
            format!("{:>6}", "-")
        }
    };
    for p in &r.products {
        let step = p.flops as f64 / p.secs.max(1e-12) / 1e9;
        let [m, n, k] = p.mnk;
        let shape = format!("{} x {m} x {n} x {k}", p.batch);
        let layout: String = p.layout.iter().collect();
        writeln!(
            s,
            "    {:8.2} ms {step:6.0} {:4.0}%  {shape:<22} {layout}  {} {}  {}",
            p.secs * 1e3,
            100.0 * step / ceiling,
            rate(p.alone),
            rate(p.alone_row_major),
            p.label
        )
        .unwrap();
    }
    // The distance from the ceiling, split (each part can be negative).
    let at = |gflops: f64, rate: f64| if rate > 0.0 { gflops / rate } else { 0.0 };
    let (mut shape, mut layout, mut step, mut at_ceiling) = (0.0, 0.0, 0.0, 0.0);
    let mut loops = 0.0;
    for p in &r.products {
        let f = p.flops as f64 / 1e9;
        let c = f / ceiling;
        at_ceiling += c;
        if p.alone <= 0.0 {
            loops += p.secs - c;
            continue;
        }
        shape += at(f, p.alone_row_major) - c;
        layout += at(f, p.alone) - at(f, p.alone_row_major);
        step += p.secs - at(f, p.alone);
    }
    writeln!(
        s,
        "  at the ceiling the products would take {:.1} ms; the {:.1} ms more they take: {:.1} ms their \
         shapes (alone, row-major), {:.1} ms their layouts (alone), {:.1} ms the step around them{}",
        at_ceiling * 1e3,
        (ptime - at_ceiling) * 1e3,
        shape * 1e3,
        layout * 1e3,
        step * 1e3,
        if loops > 0.0 {
            format!(
                ", {:.1} ms the matrix-vector and outer products (memory-bound loops, not the GEMM)",
                loops * 1e3
            )
        } else {
            String::new()
        }
    )
    .unwrap();
}

/// Every round of `bench --rounds` (diagc's tokens/s, forward+backward and whole step, and
/// PyTorch's when it ran), then the median of each column and of the per-round ratios.
pub fn rounds_table(rows: &[Round]) -> String {
    let mut s = String::new();
    let torch = rows.iter().all(|r| r.2.is_some());
    writeln!(
        s,
        "{} rounds, tokens/s (forward+backward / whole step){}:",
        rows.len(),
        if torch {
            ", diagc then PyTorch in each"
        } else {
            ""
        }
    )
    .unwrap();
    for (k, (fb, st, t)) in rows.iter().enumerate() {
        match t {
            Some((pf, ps)) => writeln!(s,
                "  round {:2}: diagc {fb:6.0} / {st:6.0}   PyTorch {pf:6.0} / {ps:6.0}   ratio {:.2}x / {:.2}x",
                k + 1,
                fb / pf,
                st / ps
            ).unwrap(),
            None => writeln!(s, "  round {:2}: diagc {fb:6.0} / {st:6.0}", k + 1).unwrap(),
        }
    }
    let col = |f: &dyn Fn(&Round) -> f64| median(rows.iter().map(f).collect());
    write!(
        s,
        "  median:   diagc {:6.0} / {:6.0}",
        col(&|r| r.0),
        col(&|r| r.1)
    )
    .unwrap();
    if torch {
        let t = |r: &Round| r.2.unwrap_or((f64::NAN, f64::NAN));
        writeln!(
            s,
            "   PyTorch {:6.0} / {:6.0}   ratio {:.2}x / {:.2}x (median of the rounds' ratios)",
            col(&|r| t(r).0),
            col(&|r| t(r).1),
            col(&|r| r.0 / t(r).0),
            col(&|r| r.1 / t(r).1)
        )
        .unwrap();
    } else {
        writeln!(s).unwrap();
    }
    s
}

/// PyTorch's figures from its JSON line `v` beside diagc's tokens/s `(forward+backward,
/// whole step)`, with the ratios: `label` follows the version (` eager`), `width` is the
/// figures' column width, `memory` the memory line's text and JSON key.
pub fn pytorch_report(
    v: &serde_json::Value,
    label: &str,
    width: usize,
    (fb, step): (f64, f64),
    (memory, key): (&str, &str),
) -> String {
    let mut s = String::new();
    let (pf, ps) = (
        v["fwd_bwd_tokens_per_s"].as_f64().unwrap_or(0.0),
        v["step_tokens_per_s"].as_f64().unwrap_or(0.0),
    );
    writeln!(
        s,
        "PyTorch {}{label} in the same run:",
        v["torch"].as_str().unwrap_or("?")
    )
    .unwrap();
    writeln!(
        s,
        "  forward+backward:         {pf:width$.0} tokens/s   (diagc / PyTorch = {:.2}x)",
        fb / pf
    )
    .unwrap();
    writeln!(
        s,
        "  whole step (+clip, Adam): {ps:width$.0} tokens/s   (diagc / PyTorch = {:.2}x)",
        step / ps
    )
    .unwrap();
    writeln!(s, "  {memory}: {:.0} MiB", v[key].as_f64().unwrap_or(0.0)).unwrap();
    s
}
