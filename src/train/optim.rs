//! The optimiser of the protocol: Adam (beta1 0.9, beta2 0.98, eps 1e-9, no weight decay), the
//! Noam learning-rate schedule, and clipping by global gradient norm.

/// `scale * d^-0.5 * min(s^-0.5, s * warmup^-1.5)` for step `s` counting from 1.
pub fn noam(step: u64, d_model: usize, warmup: u64, scale: f64) -> f64 {
    let s = step.max(1) as f64;
    let w = warmup.max(1) as f64;
    scale * (d_model as f64).powf(-0.5) * s.powf(-0.5).min(s * w.powf(-1.5))
}

/// Scales every gradient so that their global L2 norm is at most `max` (0 disables); returns
/// the norm before clipping.
pub fn clip_global_norm(grads: &mut [Vec<f32>], max: f64) -> f64 {
    let norm = grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt();
    if max > 0.0 && norm > max {
        let k = (max / (norm + 1e-6)) as f32;
        for g in grads.iter_mut() {
            for x in g.iter_mut() {
                *x *= k;
            }
        }
    }
    norm
}

/// The global L2 norm of `grads` and the factor that clipping to `max` applies to them (1 when
/// the norm is within it or `max` is 0): what [`clip_global_norm`] does, without writing the
/// gradients, so they can stay where the executor left them ([`Adam::update_scaled`]).
pub fn clip_factor(grads: &[&[f32]], max: f64) -> (f64, f32) {
    simd_targets! {
    fn sum_sq(x: &[f32]) -> f64 {
        let mut acc = [0f64; 4];
        let chunks = x.chunks_exact(4);
        let rest: f64 = chunks
            .remainder()
            .iter()
            .map(|v| (*v as f64) * (*v as f64))
            .sum();
        for c in chunks {
            for k in 0..4 {
                acc[k] += (c[k] as f64) * (c[k] as f64);
            }
        }
        (acc[0] + acc[1]) + (acc[2] + acc[3]) + rest
    }
    }
    let cores = crate::backend::cpu::exec::kernels::cores();
    let mut total = 0.0;
    for g in grads {
        total += if cores < 2 || g.len() < 1 << 16 {
            sum_sq(g)
        } else {
            use rayon::prelude::*;
            let chunk = g.len().div_ceil(cores);
            // The parts' sums are added in order, so the norm does not depend on scheduling.
            let parts: Vec<f64> = g.par_chunks(chunk).map(sum_sq).collect();
            parts.into_iter().sum::<f64>()
        };
    }
    let norm = total.sqrt();
    let k = if max > 0.0 && norm > max {
        (max / (norm + 1e-6)) as f32
    } else {
        1.0
    };
    (norm, k)
}

/// Adam with PyTorch's update rule (bias-corrected moments).
#[derive(Clone, Debug, PartialEq)]
pub struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Steps taken so far.
    pub step: u64,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl Adam {
    /// The protocol's Adam for parameters of these lengths.
    pub fn new(lengths: &[usize]) -> Adam {
        Adam {
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-9,
            step: 0,
            m: lengths.iter().map(|n| vec![0.0; *n]).collect(),
            v: lengths.iter().map(|n| vec![0.0; *n]).collect(),
        }
    }

    /// One update of every parameter with learning rate `lr`.
    pub fn update(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>], lr: f64) {
        let views: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        self.update_scaled(params, &views, lr, 1.0);
    }

    /// [`Adam::update`] with every gradient multiplied by `k` first (in f32, as clipping
    /// would have stored it), reading the gradients in place.
    pub fn update_scaled(&mut self, params: &mut [Vec<f32>], grads: &[&[f32]], lr: f64, k: f32) {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(t);
        let c2 = 1.0 - b2.powi(t);
        let step_size = (lr / c1) as f32;
        let (b1f, b2f, eps) = (b1 as f32, b2 as f32, self.eps as f32);
        let c2_sqrt = c2.sqrt() as f32;
        let update = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
            adam_update(p, g, m, v, [k, b1f, b2f, eps, step_size, c2_sqrt]);
        };
        // Elementwise and independent: large tensors are split over the cores.
        let cores = crate::backend::cpu::exec::kernels::cores();
        let state = self.m.iter_mut().zip(self.v.iter_mut());
        for ((p, g), (m, v)) in params.iter_mut().zip(grads).zip(state) {
            if cores < 2 || p.len() < 1 << 16 {
                update(p, g, m, v);
                continue;
            }
            let chunk = p.len().div_ceil(cores);
            rayon::scope(|scope| {
                let moments = m.chunks_mut(chunk).zip(v.chunks_mut(chunk));
                for ((p, g), (m, v)) in p.chunks_mut(chunk).zip(g.chunks(chunk)).zip(moments) {
                    let update = &update;
                    scope.spawn(move |_| update(p, g, m, v));
                }
            });
        }
    }
}

simd_targets! {
/// One Adam step over one tensor, `c = [k, beta1, beta2, eps, lr / c1, sqrt(c2)]`: the
/// gradient scaled by the clipping factor `k`, then PyTorch's update
/// `p -= lr / c1 * m / (sqrt(v) / sqrt(c2) + eps)`. Every element in the same f32 operations,
/// vectorised by the widest SIMD the CPU has.
fn adam_update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: [f32; 6]) {
    let [k, b1f, b2f, eps, step_size, c2_sqrt] = c;
    let state = m.iter_mut().zip(v.iter_mut());
    for ((p, g), (m, v)) in p.iter_mut().zip(g).zip(state) {
        let gi = if k == 1.0 { *g } else { *g * k };
        *m = b1f * *m + (1.0 - b1f) * gi;
        *v = b2f * *v + (1.0 - b2f) * gi * gi;
        *p -= step_size * *m / (v.sqrt() / c2_sqrt + eps);
    }
}
}
