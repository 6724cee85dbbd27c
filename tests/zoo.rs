//! The attention zoo (issue 20): each mechanism against an independent, naive implementation of
//! its formula, written here as plain loops over positions, heads and features. Two checks per
//! mechanism, on the f64 interpreter at small sizes with seeded random inputs and parameters:
//! - forward: the diagram's output equals the naive formula's (within 1e-12);
//! - gradient: autodiff's gradient of every input and every parameter, for a random seed on
//!   the output, equals central finite differences of the *naive* formula (so a wrong diagram,
//!   a wrong derivative rule and a wrong formula all show).
//!
//! The naive side reads the parameters in the order the mechanism declares them (the order of
//! `Instance::params`), checking each one's name, and must use them all.

use diagc::autodiff;
use diagc::backend::cpu::harness::{self, Rng};
use diagc::backend::cpu::interp::{self, RunOptions};
use diagc::backend::cpu::tensor::Tensor;
use diagc::ir::instance::{HyperValue, Instance};

mod common;
use common::{bindings, instance_of};

type Rows = Vec<Vec<f64>>;

/// The naive side's view of one set of inputs: the input rows and the parameters, taken in
/// order.
struct Params<'a> {
    inst: &'a Instance,
    ins: &'a [Tensor],
    next: usize,
}

impl<'a> Params<'a> {
    /// The mechanism's input `x: [tok, dm]` as rows.
    fn x(&self) -> Rows {
        rows(self.inst, &self.ins[0], "tok", "dm")
    }

    /// The next parameter, whose name must end with `suffix`, as a flat vector in its axes'
    /// order (row-major).
    fn take(&mut self, suffix: &str) -> Vec<f64> {
        let p = &self.inst.params[self.next];
        assert!(
            p.name.ends_with(suffix),
            "parameter {} is {}, not ...{suffix}",
            self.next,
            p.name
        );
        self.next += 1;
        let t = &self.ins[self.next];
        t.data.as_standard_layout().iter().copied().collect()
    }

    /// The next `linear` box (its weight, then its bias when `bias`) applied to each row:
    /// `out[t][o] = sum_i rows[t][i] w[i][o] (+ b[o])`, the output features flattened in the
    /// order of the box's output axes.
    fn linear(&mut self, rows: &[Vec<f64>], bias: bool) -> Rows {
        let n_in = rows[0].len();
        let w = self.take(".weight");
        assert_eq!(w.len() % n_in, 0);
        let n_out = w.len() / n_in;
        let b = if bias {
            self.take(".bias")
        } else {
            vec![0.0; n_out]
        };
        assert_eq!(b.len(), n_out);
        rows.iter()
            .map(|r| {
                (0..n_out)
                    .map(|o| b[o] + (0..n_in).map(|i| r[i] * w[i * n_out + o]).sum::<f64>())
                    .collect()
            })
            .collect()
    }
}

/// A `[A, B]` tensor (axes in any order) as rows over `A`.
fn rows(inst: &Instance, t: &Tensor, a: &str, b: &str) -> Rows {
    let pos = |n: &str| {
        t.axes
            .iter()
            .position(|x| inst.axes.name(*x) == n)
            .unwrap_or_else(|| panic!("no axis {n}"))
    };
    let (pa, pb) = (pos(a), pos(b));
    let sh = t.data.shape();
    (0..sh[pa])
        .map(|i| {
            (0..sh[pb])
                .map(|j| {
                    let mut idx = vec![0; 2];
                    idx[pa] = i;
                    idx[pb] = j;
                    t.data[idx.as_slice()]
                })
                .collect()
        })
        .collect()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// `sum_d a[off + d] b[off2 + d]` over `n` features.
fn dotn(a: &[f64], off: usize, b: &[f64], off2: usize, n: usize) -> f64 {
    (0..n).map(|d| a[off + d] * b[off2 + d]).sum()
}

/// Softmax of the scores `s` (the visible keys of one query).
fn softmax(s: &[f64]) -> Vec<f64> {
    let top = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|x| (x - top).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

/// Per head, `out_i = sum_(j <= i) w_ij v_j` with `w = weights(head, i)` (i + 1 of them) and
/// `v` the head's slice of the value rows (`v[j][voff(head) + d]`), heads concatenated.
fn attend(
    t: usize,
    heads: usize,
    dk: usize,
    v: &[Vec<f64>],
    voff: impl Fn(usize) -> usize,
    mut weights: impl FnMut(usize, usize) -> Vec<f64>,
) -> Rows {
    let mut out = vec![vec![0.0; heads * dk]; t];
    for h in 0..heads {
        for (i, row) in out.iter_mut().enumerate() {
            let w = weights(h, i);
            assert_eq!(w.len(), i + 1);
            for d in 0..dk {
                row[h * dk + d] = (0..=i).map(|j| w[j] * v[j][voff(h) + d]).sum();
            }
        }
    }
    out
}

/// M1's per-head softmax weights from scores given by `score(h, i, j)`.
fn softmax_weights(
    score: impl Fn(usize, usize, usize) -> f64,
) -> impl FnMut(usize, usize) -> Vec<f64> {
    move |h, i| softmax(&(0..=i).map(|j| score(h, i, j)).collect::<Vec<_>>())
}

/// Runs the stdlib mechanism `mech` at `sizes` with `hypers` and seeded random inputs, and checks
/// its output and its gradients against `naive` (see the module's comment).
fn zoo_matches_naive(
    mech: &str,
    seed: u64,
    sizes: &[(&str, u64)],
    hypers: &[(&str, f64)],
    naive: impl Fn(&mut Params) -> Rows,
) {
    let hypers: Vec<(&str, HyperValue)> = hypers
        .iter()
        .map(|(k, v)| (*k, HyperValue::Num(*v)))
        .collect();
    let inst = instance_of(
        &format!("stdlib/attention/{mech}.diag"),
        &[],
        mech,
        &bindings(sizes, &hypers),
    );
    assert_eq!(inst.data_inputs, 1, "{mech}: one input, x");
    let run_naive = |ins: &[Tensor]| {
        let mut p = Params {
            inst: &inst,
            ins,
            next: 0,
        };
        let y = naive(&mut p);
        assert_eq!(
            p.next,
            inst.params.len(),
            "{mech}: the naive formula uses every parameter"
        );
        y
    };
    let ins = harness::random_inputs(&inst, seed);
    let run = |d, ins| interp::run(d, &inst.axes, &inst.sizes, ins, RunOptions::default());
    let out = run(&inst.diagram, ins.clone()).unwrap();
    let got = rows(&inst, &out[0], "tok", "dm");
    let want = run_naive(&ins);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.len(), w.len());
        for (j, (g, w)) in g.iter().zip(w).enumerate() {
            assert!(
                (g - w).abs() < 1e-12,
                "{mech} forward ({i}, {j}): {g} vs {w}"
            );
        }
    }

    // The gradient of sum(r * y) for a random r, by autodiff on the diagram...
    let mut rng = Rng::new(seed ^ 0x5eed);
    let r: Rows = got
        .iter()
        .map(|row| row.iter().map(|_| rng.uniform() * 2.0 - 1.0).collect())
        .collect();
    let grad = autodiff::gradient(&inst.diagram).unwrap();
    let oty = &inst.diagram.wire(inst.diagram.outputs[0]).ty;
    let mut seed_t = Tensor::from_vec(
        oty.axes.clone(),
        &inst.shape(oty),
        vec![0.0; got.len() * got[0].len()],
    );
    {
        let (tok, dm) = (
            inst.axes.lookup("tok").unwrap(),
            inst.axes.lookup("dm").unwrap(),
        );
        let (pt, pd) = (
            oty.axes.iter().position(|a| *a == tok).unwrap(),
            oty.axes.iter().position(|a| *a == dm).unwrap(),
        );
        for (i, row) in r.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let mut idx = vec![0; 2];
                idx[pt] = i;
                idx[pd] = j;
                seed_t.data[idx.as_slice()] = *v;
            }
        }
    }
    let mut gin = ins.clone();
    gin.push(seed_t);
    let g = run(&grad.diagram, gin).unwrap();
    // ... against central differences of the naive formula, entry by entry of every input.
    let loss = |ins: &[Tensor]| -> f64 {
        run_naive(ins)
            .iter()
            .zip(&r)
            .map(|(y, r)| y.iter().zip(r).map(|(a, b)| a * b).sum::<f64>())
            .sum()
    };
    let eps = 1e-5;
    let mut checked = 0;
    for (k, t) in ins.iter().enumerate() {
        let gk = &g[grad.grad_of[k].expect("a gradient per input")];
        assert_eq!(
            gk.axes, t.axes,
            "{mech}: gradient {k} in the input's axis order"
        );
        let analytic: Vec<f64> = gk.data.iter().copied().collect();
        for (e, a) in analytic.iter().enumerate() {
            let mut shifted = ins.to_vec();
            *shifted[k].data.iter_mut().nth(e).unwrap() += eps;
            let up = loss(&shifted);
            *shifted[k].data.iter_mut().nth(e).unwrap() -= 2.0 * eps;
            let down = loss(&shifted);
            let numeric = (up - down) / (2.0 * eps);
            let name = if k == 0 {
                "x"
            } else {
                &inst.params[k - 1].name
            };
            assert!(
                (a - numeric).abs() <= 1e-7 * (1.0 + a.abs()),
                "{mech} gradient of {name}[{e}]: autodiff {a}, naive finite differences {numeric}"
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "{mech}: {checked} gradient entries");
}

const SIZES: &[(&str, u64)] = &[("tok", 5), ("dm", 8), ("head", 2)];

#[test]
fn multi_query_attention_matches_a_naive_computation() {
    zoo_matches_naive("mqa", 21, SIZES, &[], |p| {
        let x = p.x();
        let (t, h, dk) = (x.len(), 2, 4);
        let q = p.linear(&x, true);
        let k = p.linear(&x, true); // [tok][dk]: one key for all heads
        let v = p.linear(&x, true);
        assert_eq!(k[0].len(), dk);
        let s = |hh: usize, i: usize, j: usize| dotn(&q[i], hh * dk, &k[j], 0, dk) / 2.0;
        let o = attend(t, h, dk, &v, |_| 0, softmax_weights(s));
        p.linear(&o, true)
    });
}

#[test]
fn grouped_query_attention_matches_a_naive_computation() {
    // 4 heads in 2 groups of 2; head hh uses the keys and values of group hh / 2.
    let sizes = &[("tok", 5), ("dm", 8), ("head", 4)];
    zoo_matches_naive("gqa", 22, sizes, &[], |p| {
        let x = p.x();
        let (t, h, dk) = (x.len(), 4, 2);
        let q = p.linear(&x, true);
        let k = p.linear(&x, true); // [tok][group * dk]
        let v = p.linear(&x, true);
        assert_eq!(k[0].len(), 2 * dk);
        let s = |hh: usize, i: usize, j: usize| {
            dotn(&q[i], hh * dk, &k[j], (hh / 2) * dk, dk) / (dk as f64).sqrt()
        };
        let o = attend(t, h, dk, &v, |hh| (hh / 2) * dk, softmax_weights(s));
        p.linear(&o, true)
    });
}

#[test]
fn multi_head_latent_attention_matches_a_naive_computation() {
    zoo_matches_naive("mla", 23, SIZES, &[], |p| {
        let x = p.x();
        let (t, h, dk) = (x.len(), 2, 4);
        let q = p.linear(&x, true);
        let c = p.linear(&x, false); // the latent, [tok][dm / 2]
        assert_eq!(c[0].len(), 4);
        let k = p.linear(&c, false);
        let v = p.linear(&c, false);
        let s = |hh: usize, i: usize, j: usize| dotn(&q[i], hh * dk, &k[j], hh * dk, dk) / 2.0;
        let o = attend(t, h, dk, &v, |hh| hh * dk, softmax_weights(s));
        p.linear(&o, true)
    });
}

#[test]
fn output_gated_attention_matches_a_naive_computation() {
    zoo_matches_naive("output_gated", 24, SIZES, &[], |p| {
        let x = p.x();
        let (t, h, dk) = (x.len(), 2, 4);
        let q = p.linear(&x, true);
        let k = p.linear(&x, true);
        let v = p.linear(&x, true);
        let s = |hh: usize, i: usize, j: usize| dotn(&q[i], hh * dk, &k[j], hh * dk, dk) / 2.0;
        let o = attend(t, h, dk, &v, |hh| hh * dk, softmax_weights(s));
        let g = p.linear(&x, true);
        let gated: Rows = o
            .iter()
            .zip(&g)
            .map(|(o, g)| o.iter().zip(g).map(|(o, g)| o * sigmoid(*g)).collect())
            .collect();
        p.linear(&gated, true)
    });
}

#[test]
fn differential_attention_matches_a_naive_computation() {
    let lambda_init = 0.8;
    zoo_matches_naive("differential", 25, SIZES, &[], |p| {
        let x = p.x();
        let (t, h, dk, dh) = (x.len(), 2, 4, 2);
        let q1 = p.linear(&x, true);
        let q2 = p.linear(&x, true);
        let k1 = p.linear(&x, true);
        let k2 = p.linear(&x, true);
        let v = p.linear(&x, true);
        // lambda per head from its four [dh] vectors, in the order they are written.
        let (lq1, lk1, lq2, lk2) = (
            p.take(".value"),
            p.take(".value"),
            p.take(".value"),
            p.take(".value"),
        );
        let lambda = |hh: usize| {
            dotn(&lq1, hh * dh, &lk1, hh * dh, dh).exp()
                - dotn(&lq2, hh * dh, &lk2, hh * dh, dh).exp()
                + lambda_init
        };
        let sd = (dh as f64).sqrt();
        let mut o = attend(
            t,
            h,
            dk,
            &v,
            |hh| hh * dk,
            |hh, i| {
                let a1 = softmax(
                    &(0..=i)
                        .map(|j| dotn(&q1[i], hh * dh, &k1[j], hh * dh, dh) / sd)
                        .collect::<Vec<_>>(),
                );
                let a2 = softmax(
                    &(0..=i)
                        .map(|j| dotn(&q2[i], hh * dh, &k2[j], hh * dh, dh) / sd)
                        .collect::<Vec<_>>(),
                );
                a1.iter()
                    .zip(&a2)
                    .map(|(a, b)| a - lambda(hh) * b)
                    .collect()
            },
        );
        // Per head and token: divided by the root mean square, times (1 - lambda_init).
        for row in o.iter_mut() {
            for hh in 0..h {
                let y = &mut row[hh * dk..(hh + 1) * dk];
                let rms = (y.iter().map(|v| v * v).sum::<f64>() / dk as f64 + 1e-5).sqrt();
                for v in y.iter_mut() {
                    *v = *v / rms * (1.0 - lambda_init);
                }
            }
        }
        p.linear(&o, true)
    });
}

#[test]
fn stick_breaking_attention_matches_a_naive_computation() {
    zoo_matches_naive("stick_breaking", 26, SIZES, &[], |p| {
        let x = p.x();
        let (t, h, dk) = (x.len(), 2, 4);
        let q = p.linear(&x, true);
        let k = p.linear(&x, true);
        let v = p.linear(&x, true);
        let beta =
            |hh: usize, i: usize, j: usize| sigmoid(dotn(&q[i], hh * dk, &k[j], hh * dk, dk) / 2.0);
        // a_ij = beta_ij times the product of (1 - beta_il) over the nearer keys j < l <= i.
        let o = attend(
            t,
            h,
            dk,
            &v,
            |hh| hh * dk,
            |hh, i| {
                (0..=i)
                    .map(|j| {
                        beta(hh, i, j) * (j + 1..=i).map(|l| 1.0 - beta(hh, i, l)).product::<f64>()
                    })
                    .collect()
            },
        );
        p.linear(&o, true)
    });
}

#[test]
fn mamba2_ssd_matches_a_naive_computation() {
    zoo_matches_naive("mamba2", 27, SIZES, &[], |p| {
        let x = p.x();
        let (t, h, dk) = (x.len(), 2, 4);
        let c = p.linear(&x, true); // C, [tok][dk]
        let b = p.linear(&x, true); // B
        let z = p.linear(&x, true); // [tok][head]
        let xv = p.linear(&x, true); // X, [tok][head * dk]
        let a = p.take(".value"); // [head]
        let dt: Rows = z
            .iter()
            .map(|r| r.iter().map(|z| (1.0 + z.exp()).ln()).collect())
            .collect();
        let o = attend(
            t,
            h,
            dk,
            &xv,
            |hh| hh * dk,
            |hh, i| {
                let big_a = -a[hh].exp();
                (0..=i)
                    .map(|j| {
                        let decay: f64 = (j + 1..=i).map(|l| dt[l][hh]).sum();
                        dotn(&c[i], 0, &b[j], 0, dk) * (big_a * decay).exp() * dt[j][hh]
                    })
                    .collect()
            },
        );
        p.linear(&o, true)
    });
}

#[test]
fn gated_linear_attention_matches_a_naive_computation() {
    zoo_matches_naive("gla", 28, SIZES, &[], |p| {
        let x = p.x();
        let (t, h, dk) = (x.len(), 2, 4);
        let q = p.linear(&x, true);
        let k = p.linear(&x, true);
        let v = p.linear(&x, true);
        let alpha: Rows = p
            .linear(&x, true)
            .iter()
            .map(|r| r.iter().map(|z| sigmoid(*z).powf(1.0 / 16.0)).collect())
            .collect();
        // The closed form of the recurrence: out_i[e] = sum_(j <= i) sum_d q_i[d]
        // (prod_(j < l <= i) alpha_l[d]) k_j[d] v_j[e].
        let mut o = vec![vec![0.0; h * dk]; t];
        for hh in 0..h {
            for i in 0..t {
                for e in 0..dk {
                    let mut acc = 0.0;
                    for j in 0..=i {
                        for d in 0..dk {
                            let f = hh * dk + d;
                            let decay: f64 = (j + 1..=i).map(|l| alpha[l][f]).product();
                            acc += q[i][f] * decay * k[j][f] * v[j][hh * dk + e];
                        }
                    }
                    o[i][hh * dk + e] = acc;
                }
            }
        }
        p.linear(&o, true)
    });
}

/// Layer normalisation (epsilon 1e-5) of each head's `dk` features, with a gain and a bias over
/// `dk` shared by the heads.
fn layernorm_heads(rows: &[Vec<f64>], g: &[f64], b: &[f64], h: usize, dk: usize) -> Rows {
    rows.iter()
        .map(|r| {
            let mut out = r.clone();
            for hh in 0..h {
                let s = &r[hh * dk..(hh + 1) * dk];
                let mean = s.iter().sum::<f64>() / dk as f64;
                let var = s.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / dk as f64;
                for d in 0..dk {
                    out[hh * dk + d] = (s[d] - mean) / (var + 1e-5).sqrt() * g[d] + b[d];
                }
            }
            out
        })
        .collect()
}

#[test]
fn qk_norm_attention_matches_a_naive_computation() {
    zoo_matches_naive("qk_norm", 29, SIZES, &[], |p| {
        let x = p.x();
        let (t, h, dk) = (x.len(), 2, 4);
        let q = p.linear(&x, true);
        let q = layernorm_heads(&q, &p.take(".gain"), &p.take(".bias"), h, dk);
        let k = p.linear(&x, true);
        let k = layernorm_heads(&k, &p.take(".gain"), &p.take(".bias"), h, dk);
        let v = p.linear(&x, true);
        let s = |hh: usize, i: usize, j: usize| dotn(&q[i], hh * dk, &k[j], hh * dk, dk) / 2.0;
        let o = attend(t, h, dk, &v, |hh| hh * dk, softmax_weights(s));
        p.linear(&o, true)
    });
}

#[test]
fn talking_heads_attention_matches_a_naive_computation() {
    let sizes = &[("tok", 5), ("dm", 12), ("head", 3)];
    zoo_matches_naive("talking_heads", 30, sizes, &[], |p| {
        let x = p.x();
        let (t, h, dk) = (x.len(), 3, 4);
        let q = p.linear(&x, true);
        let k = p.linear(&x, true);
        let v = p.linear(&x, true);
        let pl = p.take(".weight"); // [head, hx]: P_l[h', h] at h' * h + h
        let pw = p.take(".weight");
        let s = |hh: usize, i: usize, j: usize| dotn(&q[i], hh * dk, &k[j], hh * dk, dk) / 2.0;
        // Mixed logits, softmax per head over the visible keys, mixed weights.
        let w = |hh: usize, i: usize| {
            softmax(
                &(0..=i)
                    .map(|j| (0..h).map(|g| pl[g * h + hh] * s(g, i, j)).sum::<f64>())
                    .collect::<Vec<_>>(),
            )
        };
        let o = attend(
            t,
            h,
            dk,
            &v,
            |hh| hh * dk,
            |hh, i| {
                let ws: Vec<Vec<f64>> = (0..h).map(|g| w(g, i)).collect();
                (0..=i)
                    .map(|j| (0..h).map(|g| pw[g * h + hh] * ws[g][j]).sum())
                    .collect()
            },
        );
        p.linear(&o, true)
    });
}

#[test]
fn log_length_scaled_attention_matches_a_naive_computation() {
    zoo_matches_naive("logn", 31, SIZES, &[], |p| {
        let x = p.x();
        let (t, h, dk) = (x.len(), 2, 4);
        let q = p.linear(&x, true);
        let k = p.linear(&x, true);
        let v = p.linear(&x, true);
        let s = |hh: usize, i: usize, j: usize| {
            ((i + 1) as f64).ln() * dotn(&q[i], hh * dk, &k[j], hh * dk, dk) / 2.0
        };
        let o = attend(t, h, dk, &v, |hh| hh * dk, softmax_weights(s));
        p.linear(&o, true)
    });
}

#[test]
fn relative_position_bias_matches_a_naive_computation() {
    zoo_matches_naive("relpos", 37, SIZES, &[], |p| {
        let x = p.x();
        let (t, h, dk) = (x.len(), 2, 4);
        let q = p.linear(&x, true);
        let k = p.linear(&x, true);
        let v = p.linear(&x, true);
        // The table: one number per head and distance, [head, rel] with rel = tok.
        let table = p.take(".value");
        assert_eq!(table.len(), h * t);
        let s = |hh: usize, i: usize, j: usize| {
            dotn(&q[i], hh * dk, &k[j], hh * dk, dk) / 2.0 + table[hh * t + (i - j)]
        };
        let o = attend(t, h, dk, &v, |hh| hh * dk, softmax_weights(s));
        p.linear(&o, true)
    });
}

#[test]
fn softpick_attention_matches_a_naive_computation() {
    zoo_matches_naive("softpick", 32, SIZES, &[], |p| {
        let x = p.x();
        let (t, h, dk) = (x.len(), 2, 4);
        let q = p.linear(&x, true);
        let k = p.linear(&x, true);
        let v = p.linear(&x, true);
        // The formula as the paper states it, without the rescaling by exp(-m).
        let o = attend(
            t,
            h,
            dk,
            &v,
            |hh| hh * dk,
            |hh, i| {
                let e: Vec<f64> = (0..=i)
                    .map(|j| (dotn(&q[i], hh * dk, &k[j], hh * dk, dk) / 2.0).exp() - 1.0)
                    .collect();
                let den: f64 = e.iter().map(|v| v.abs()).sum::<f64>() + 1e-6;
                e.iter().map(|v| v.max(0.0) / den).collect()
            },
        );
        p.linear(&o, true)
    });
}

#[test]
fn based_taylor_attention_matches_a_naive_computation() {
    zoo_matches_naive("based", 33, SIZES, &[], |p| {
        let x = p.x();
        let (t, h, dk) = (x.len(), 2, 4);
        let q = p.linear(&x, true);
        let k = p.linear(&x, true);
        let v = p.linear(&x, true);
        // The linear form with the explicit feature map phi(x) = (1, x, x (x) x / sqrt 2) of
        // x = q / dk^(1/4) (so that phi(q) . phi(k) has s = q . k / sqrt(dk)).
        let phi = |r: &[f64], off: usize| -> Vec<f64> {
            let z: Vec<f64> = (0..dk)
                .map(|d| r[off + d] / (dk as f64).powf(0.25))
                .collect();
            let mut f = vec![1.0];
            f.extend(&z);
            for a in &z {
                for b in &z {
                    f.push(a * b / 2f64.sqrt());
                }
            }
            f
        };
        let o = attend(
            t,
            h,
            dk,
            &v,
            |hh| hh * dk,
            |hh, i| {
                let fq = phi(&q[i], hh * dk);
                let f: Vec<f64> = (0..=i)
                    .map(|j| fq.iter().zip(phi(&k[j], hh * dk)).map(|(a, b)| a * b).sum())
                    .collect();
                let z: f64 = f.iter().sum();
                f.iter().map(|v| v / z).collect()
            },
        );
        p.linear(&o, true)
    });
}

// ---- The taxonomy and the registry page.

fn taxonomy() -> diagc::rewrite::taxonomy::Taxonomy {
    let book = diagc::rewrite::rule::RuleBook::stdlib().expect("the stdlib rules load");
    diagc::rewrite::taxonomy::build(&book).expect("the taxonomy holds")
}

#[test]
fn every_mechanism_is_derived_or_listed_with_its_reason() {
    let t = taxonomy();
    let all: Vec<String> = diagc::stdlib::mechanisms().collect();
    assert!(all.len() >= 25, "{} mechanisms", all.len());
    assert!(
        t.not_reached.is_empty(),
        "reached by no derivation and given no reason in stdlib/zoo.toml: {:?}",
        t.not_reached
    );
    let reached: Vec<&str> = t.nodes.iter().map(|n| n.name.as_str()).collect();
    for m in &all {
        let module = format!("attention.{m}");
        let listed = t.not_derived.iter().any(|n| n.name == module);
        assert!(
            reached.contains(&module.as_str()) != listed,
            "{m}: reached {}, listed as not derived {listed}",
            reached.contains(&module.as_str())
        );
    }
    // The mechanisms the issue names as unreached before it, and the zoo's derived ones.
    for m in [
        "cosine",
        "softmax_free",
        "qk_norm",
        "mqa",
        "mla",
        "output_gated",
        "softcap",
        "sliding_window",
        "sink",
        "forgetting",
        "talking_heads",
    ] {
        assert!(
            reached.contains(&format!("attention.{m}").as_str()),
            "{m} is not in the taxonomy"
        );
    }
    // Every node has its class; every edge goes down (a node reached backwards is drawn one
    // layer above the node its derivation goes into).
    let node = |n: &str| t.nodes.iter().find(|x| x.name == n).unwrap();
    for n in &t.nodes {
        assert!(
            diagc::rewrite::registry::CLASSES.contains(&n.class.as_str()),
            "{}: class {:?}",
            n.name,
            n.class
        );
    }
    for e in &t.edges {
        let (a, b) = (node(&e.from), node(&e.to));
        assert!(b.depth > a.depth, "{} -> {}", e.from, e.to);
    }
    assert!(node("attention.output_gated").backward);
    assert!(!node("attention.mqa").backward);
    assert_eq!(
        node("attention.softmax_free").depth + 1,
        node("attention.m0").depth
    );
}

#[test]
fn the_registry_page_is_generated_and_current() {
    let t = taxonomy();
    let md = diagc::rewrite::taxonomy::markdown(&t).unwrap();
    // Every mechanism has its section, its file, its picture and its parameter count.
    for m in diagc::stdlib::mechanisms() {
        assert!(md.contains(&format!("\n## {m}\n")), "{m}");
        assert!(
            md.contains(&format!("(../stdlib/attention/{m}.diag)")),
            "{m}"
        );
        assert!(
            md.contains(&format!("(../tests/golden/draw/{m}.svg)")),
            "{m}"
        );
        assert!(
            common::root()
                .join(format!("tests/golden/draw/{m}.svg"))
                .exists(),
            "{m} has no picture"
        );
    }
    // M1's sub-layer at d_model 512: four 512 x 512 maps with biases, counted independently.
    assert!(md.contains(&format!("| {} |", "1,050,624")), "M1's count");
    assert_eq!(
        diagc::rewrite::taxonomy::parameter_count("m1").unwrap(),
        4 * (512 * 512 + 512)
    );
    // MQA: full query and output maps, keys and values of width dk = 128.
    assert_eq!(
        diagc::rewrite::taxonomy::parameter_count("mqa").unwrap(),
        2 * (512 * 512 + 512) + 2 * (512 * 128 + 128)
    );
    assert!(md.contains("Not derived:"));
    assert!(md.contains("m1_to_mqa.derive"));
    common::golden("docs/variants.md", &md);
    // The command writes the same bytes.
    let o = common::diagc(&["taxonomy", "--format", "md"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), md);
}

#[test]
fn a_stdlib_mechanism_trains_in_its_registry_model_by_default() {
    // `diagc train` resolves the model before it needs data: the dry run's config says which.
    let dir = std::env::temp_dir().join(format!("diagc-zoo-model-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (mech, extra, want) in [
        ("mamba2", &[][..], Some("lm_nopos")),
        ("mamba2", &["--model", "lm"][..], None),
        ("m1", &[][..], None),
    ] {
        let out = dir.join(format!("{mech}-{}", extra.len()));
        let mut args = vec![
            "train",
            mech,
            "--d-model",
            "16",
            "--heads",
            "2",
            "--d-ff",
            "16",
            "--bptt",
            "8",
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--train-tokens",
            "2000",
            "--eval-tokens",
            "200",
            "--data",
            "../shared/data/ptb",
            "--out",
        ];
        let o_s = out.to_string_lossy().to_string();
        args.push(&o_s);
        args.extend_from_slice(extra);
        let o = common::diagc(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            cfg["model"]["model"].as_str(),
            want,
            "{mech} {extra:?}: {cfg}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The whole zoo in one toy sweep (planned, run two at a time, collected): every stdlib
/// mechanism trains a few steps in its registry's language model and reaches a finite
/// validation and test perplexity. Its numbers mean nothing; that it finishes does.
#[test]
fn the_whole_zoo_trains_in_a_toy_sweep() {
    let mechs: Vec<String> = diagc::stdlib::mechanisms().collect();
    let dir = std::env::temp_dir().join(format!("diagc-zoo-sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let list: Vec<String> = mechs.iter().map(|m| format!("\"{m}\"")).collect();
    let spec = dir.join("zoo-toy.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"zoo-toy\"\nmechanisms = [{}]\nlayers = [1]\n\n[train]\nd_model = 16\n\
             heads = 2\nd_ff = 32\nbptt = 8\nbatch_size = 4\nsteps = 6\nwarmup = 2\n\
             train_tokens = 4000\neval_tokens = 800\n",
            list.join(", ")
        ),
    )
    .unwrap();
    let sw = dir.join("sweep");
    let (spec_s, sw_s) = (spec.to_str().unwrap(), sw.to_str().unwrap());
    let o = common::diagc(&["sweep", "plan", spec_s, "-o", sw_s]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = common::diagc(&[
        "sweep",
        "run",
        sw_s,
        "--jobs",
        "2",
        "--data",
        "../shared/data/ptb",
    ]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let csv = std::fs::read_to_string(sw.join("results.csv")).unwrap();
    let mut lines = csv.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| head.iter().position(|h| *h == name).unwrap();
    let (mech, valid, test, err) = (
        col("mech"),
        col("best_valid_ppl"),
        col("test_ppl"),
        col("error"),
    );
    let mut seen = Vec::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        let ppl = |k: usize| f[k].parse::<f64>().unwrap_or(f64::NAN);
        assert!(f[err].is_empty(), "{}: {}", f[mech], f[err]);
        // Finite, and no better than a model can be after 6 steps nor worse than a broken one.
        for k in [valid, test] {
            assert!(
                ppl(k).is_finite() && ppl(k) > 100.0 && ppl(k) < 1e5,
                "{}: {} = {}",
                f[mech],
                head[k],
                f[k]
            );
        }
        seen.push(f[mech].to_string());
    }
    seen.sort();
    let mut want = mechs.clone();
    want.sort();
    assert_eq!(seen, want);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn deltanet_matches_a_naive_delta_rule() {
    // The recurrence run as written in the papers: a [dk, dv] state per head, rewritten along
    // the unit key by the delta rule, read by the unit query.
    zoo_matches_naive("deltanet", 29, SIZES, &[], |p| {
        let x = p.x();
        let (t, h, dk) = (x.len(), 2, 4);
        let q = p.linear(&x, true);
        let k = p.linear(&x, true);
        let v = p.linear(&x, true);
        let beta: Rows = p
            .linear(&x, true)
            .iter()
            .map(|r| r.iter().map(|z| sigmoid(*z)).collect())
            .collect();
        let unit = |r: &[f64]| -> Vec<f64> {
            let n = (r.iter().map(|z| z * z).sum::<f64>() + 1e-6).sqrt();
            r.iter().map(|z| z / n).collect()
        };
        let mut o = vec![vec![0.0; h * dk]; t];
        for hh in 0..h {
            let mut s = vec![vec![0.0; dk]; dk]; // s[d][e]
            for i in 0..t {
                let kn = unit(&k[i][hh * dk..(hh + 1) * dk]);
                let qn = unit(&q[i][hh * dk..(hh + 1) * dk]);
                let b = beta[i][hh];
                // k^T S (a row over e), then S - b k (k^T S) + b k v^T.
                let kts: Vec<f64> = (0..dk)
                    .map(|e| (0..dk).map(|d| kn[d] * s[d][e]).sum())
                    .collect();
                for d in 0..dk {
                    for e in 0..dk {
                        s[d][e] += b * kn[d] * (v[i][hh * dk + e] - kts[e]);
                    }
                }
                for e in 0..dk {
                    o[i][hh * dk + e] = (0..dk).map(|d| qn[d] * s[d][e]).sum();
                }
            }
        }
        p.linear(&o, true)
    });
}

#[test]
fn gated_deltanet_matches_a_naive_gated_delta_rule() {
    // DeltaNet's recurrence with the state decayed by alpha_t = exp(-exp(a) softplus(z_t)) per
    // head before the delta rule's update.
    zoo_matches_naive("gated_deltanet", 31, SIZES, &[], |p| {
        let x = p.x();
        let (t, h, dk) = (x.len(), 2, 4);
        let q = p.linear(&x, true);
        let k = p.linear(&x, true);
        let v = p.linear(&x, true);
        let beta: Rows = p
            .linear(&x, true)
            .iter()
            .map(|r| r.iter().map(|z| sigmoid(*z)).collect())
            .collect();
        let dt: Rows = p
            .linear(&x, true)
            .iter()
            .map(|r| r.iter().map(|z| (1.0 + z.exp()).ln()).collect())
            .collect();
        let a = p.take(".value"); // [head]
        let unit = |r: &[f64]| -> Vec<f64> {
            let n = (r.iter().map(|z| z * z).sum::<f64>() + 1e-6).sqrt();
            r.iter().map(|z| z / n).collect()
        };
        let mut o = vec![vec![0.0; h * dk]; t];
        for hh in 0..h {
            let mut s = vec![vec![0.0; dk]; dk]; // s[d][e]
            for i in 0..t {
                let kn = unit(&k[i][hh * dk..(hh + 1) * dk]);
                let qn = unit(&q[i][hh * dk..(hh + 1) * dk]);
                let (b, alpha) = (beta[i][hh], (-a[hh].exp() * dt[i][hh]).exp());
                // S = alpha (S - b k (k^T S)) + b k v^T.
                let kts: Vec<f64> = (0..dk)
                    .map(|e| (0..dk).map(|d| kn[d] * s[d][e]).sum())
                    .collect();
                for d in 0..dk {
                    for e in 0..dk {
                        s[d][e] =
                            alpha * (s[d][e] - b * kn[d] * kts[e]) + b * kn[d] * v[i][hh * dk + e];
                    }
                }
                for e in 0..dk {
                    o[i][hh * dk + e] = (0..dk).map(|d| qn[d] * s[d][e]).sum();
                }
            }
        }
        p.linear(&o, true)
    });
}
