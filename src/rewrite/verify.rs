//! Numeric comparison of two diagrams on the CPU interpreter, the semantic oracle.
//!
//! Both are instantiated with the same sizes (small, chosen so that every derived size is a whole
//! number), fed the same seeded data and, when their parameter tensors have the same shapes in
//! the same order, the same parameters; their outputs are compared element by element.

use super::term::Term;
use crate::backend::cpu::{harness, interp};
use crate::error::Error;
use crate::ir::Program;
use crate::ir::instance::{Bindings, Instance, instantiate};
use std::collections::BTreeMap;

/// The outcome of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum Agreement {
    /// The worst |a - b| / max(1, |a|) over all outputs and seeds.
    Agree(f64),
    /// The parameters differ in shape, so the sides cannot be fed the same ones (an equality of
    /// function classes, such as linear after linear, is not a pointwise equality).
    Incomparable(String),
}

/// The tolerance under which two diagrams are called numerically equal (f64 interpreter).
pub const TOLERANCE: f64 = 1e-9;

fn checked(t: &Term) -> Result<Program, Error> {
    t.recheck().map(|(_, p)| p)
}

/// Sizes for the free axes of both programs that every derived size divides.
fn sizes(
    a: &Program,
    b: &Program,
    name_a: &str,
    name_b: &str,
) -> Result<(Instance, Instance), Error> {
    let mut free: Vec<String> = Vec::new();
    for p in [a, b] {
        for ax in &p.axes.axes {
            for v in ax.size.vars.keys() {
                if !free.contains(v) {
                    free.push(v.clone());
                }
            }
        }
    }
    let mut rng = harness::Rng::new(7);
    let choices = [6u64, 4, 2, 3, 5, 8];
    let mut last = String::new();
    for attempt in 0..64 {
        let mut bind = Bindings {
            sizes: BTreeMap::new(),
            hypers: BTreeMap::new(),
        };
        for (i, v) in free.iter().enumerate() {
            let n = if attempt == 0 {
                choices[i % choices.len()]
            } else {
                choices[rng.below(choices.len())]
            };
            bind.sizes.insert(v.clone(), n);
        }
        // Each side binds only the free axes it has.
        let only = |p: &Program| {
            let mut b = bind.clone();
            b.sizes
                .retain(|k, _| p.axes.axes.iter().any(|ax| ax.size.vars.contains_key(k)));
            b
        };
        match (
            instantiate(a, name_a, &only(a)),
            instantiate(b, name_b, &only(b)),
        ) {
            (Ok(x), Ok(y)) => return Ok((x, y)),
            (Err(e), _) | (_, Err(e)) => last = e.to_string(),
        }
    }
    Err(Error::Rewrite(format!(
        "no small sizes instantiate both diagrams: {last}"
    )))
}

/// Compares two terms with the same boundary on a few seeds.
pub fn compare(a: &Term, b: &Term) -> Result<Agreement, Error> {
    let (pa, pb) = (checked(a)?, checked(b)?);
    compare_programs(&pa, &a.name, &pb, &b.name)
}

/// Compares diagram `na` of `pa` with diagram `nb` of `pb`.
pub fn compare_programs(
    pa: &Program,
    na: &str,
    pb: &Program,
    nb: &str,
) -> Result<Agreement, Error> {
    let (ia, ib) = sizes(pa, pb, na, nb)?;
    let shapes = |i: &Instance| -> Vec<Vec<usize>> {
        i.params
            .iter()
            .map(|p| p.axes.iter().map(|x| i.size(*x)).collect())
            .collect()
    };
    if shapes(&ia) != shapes(&ib) {
        return Ok(Agreement::Incomparable(format!(
            "their parameter tensors differ in shape ({} tensors vs {})",
            ia.params.len(),
            ib.params.len()
        )));
    }
    let mut worst = 0.0f64;
    for seed in 0..3 {
        let run = |i: &Instance| {
            interp::run(
                &i.diagram,
                &i.axes,
                &i.sizes,
                harness::random_inputs(i, seed),
                Default::default(),
            )
            .map_err(|e| Error::Rewrite(e.to_string()))
        };
        let (oa, ob) = (run(&ia)?, run(&ib)?);
        for (x, y) in oa.into_iter().zip(ob) {
            // Same axis names, maybe another order and other ids.
            let order: Vec<_> = x
                .axes
                .iter()
                .map(|ax| {
                    let name = ia.axes.name(*ax);
                    ib.axes.lookup(name).ok_or_else(|| {
                        Error::Rewrite(format!("output axis `{name}` is missing on one side"))
                    })
                })
                .collect::<Result<_, _>>()?;
            let y = y.aligned(&order);
            if x.data.shape() != y.data.shape() {
                return Err(Error::Rewrite("the outputs have different shapes".into()));
            }
            for (u, v) in x.data.iter().zip(y.data.iter()) {
                let e = (u - v).abs() / u.abs().max(1.0);
                if e.is_nan() {
                    worst = f64::INFINITY;
                } else if e > worst {
                    worst = e;
                }
            }
        }
    }
    Ok(Agreement::Agree(worst))
}

/// Checks every `equal` rule of a program numerically: `Ok` says how it was checked, `Err` that
/// its sides differ (or could not be run).
pub fn verify_rules(p: &Program) -> Vec<(String, Result<String, Error>)> {
    let mut out = Vec::new();
    for r in &p.rules {
        if r.class != crate::ir::RuleClass::Equal {
            continue;
        }
        let verdict = (|| {
            if !r.lhs.hypers.is_empty()
                && r.lhs
                    .hypers
                    .iter()
                    .any(|h| matches!(h.ty, crate::ir::HyperType::Diagram { .. }))
            {
                return Ok("not compared: it has box variables".to_string());
            }
            let mut lhs = Term::from_rule_side(&r.lhs, &p.axes)?;
            let mut rhs = Term::from_rule_side(&r.rhs, &p.axes)?;
            // Constant variables get an arbitrary value: an equality holds for every value.
            for t in [&mut lhs, &mut rhs] {
                for h in t.hypers.iter_mut() {
                    if h.default.is_none() {
                        h.default = Some(crate::ir::HyperArg::Num(crate::ir::Const::Num(0.37)));
                    }
                }
            }
            match compare(&lhs, &rhs)? {
                Agreement::Agree(e) if e <= TOLERANCE => {
                    Ok(format!("both sides agree numerically (worst {e:.1e})"))
                }
                Agreement::Agree(e) => Err(Error::Rewrite(format!(
                    "declared `equal`, but its sides differ numerically (worst relative error \
                     {e:.3e}); if they are equal only as function classes, say `expressive`"
                ))),
                Agreement::Incomparable(why) => Ok(format!(
                    "not compared pointwise: {why} (an equality of function classes)"
                )),
            }
        })();
        out.push((r.name.clone(), verdict));
    }
    out
}
