//! Grouping elementwise steps into fused steps: one scalar program each ([`super::program`]),
//! which the CPU compiles with cranelift (`backend::cpu::jit`) and CUDA renders as one kernel.
//!
//! Runs on the drafts of a plan after every box is lowered and before buffers are assigned
//! (`Builder::finish`), so the values that live only inside a group never get a buffer.
//!
//! A group is a run of consecutive steps (`check_finite` points between them do not break it)
//! that are each a unary map, a binary op, a dropout, or a copy that only permutes or
//! broadcasts, whose outputs all have the same axes in the same order (so the same row-major
//! layout): the group runs once over that layout and every member computes its element of the
//! point from its inputs' elements there. An input produced inside the group is used from
//! registers; it must then be read in the group's own layout. An input from outside is read
//! with its own strides (0 along the axes it lacks: a broadcast). A member's output is written
//! to memory only when something outside the group reads it (or it is a diagram output);
//! the others, and the `check_finite` points on them, disappear.
//!
//! A group the caller asks to leave unfused (`unfused`: a backend could not compile it) keeps
//! its original steps.

use super::build::Builder;
use super::kernels::{Binary, Kernel, Unary};
use super::nest::DynNest;
use super::program::{FusedGroup, Inst, MAX_OPERANDS, Program};
use super::{Action, Draft, Origin};
use crate::ir::AxisId;

/// What one member computes, before its operands are resolved.
#[derive(Clone, Copy)]
enum Member {
    Unary(Unary),
    Binary(Binary),
    Dropout { p: f64, key: u64 },
    Copy,
}

impl Builder<'_> {
    /// The member a draft can be, with its output value.
    fn member(&self, dr: &Draft) -> Option<(Member, usize)> {
        let Action::Kernel(k) = &dr.action else {
            return None;
        };
        let m = match k {
            Kernel::Unary(Unary::Pow(_), _) => return None,
            Kernel::Unary(u, _) => Member::Unary(*u),
            Kernel::Binary(f, _) => Member::Binary(*f),
            Kernel::Dropout { p, key, .. } => Member::Dropout { p: *p, key: *key },
            Kernel::Copy(_) => Member::Copy,
            _ => return None,
        };
        let [o] = dr.outs[..] else { return None };
        let out = &self.vals[o];
        if out.root != o || out.origin != Origin::Work {
            return None;
        }
        // Every input is read with its strides along the output's axes, which is what these
        // kernels do only when the input has no axis the output lacks.
        let fits = dr
            .ins
            .iter()
            .all(|v| self.vals[*v].axes.iter().all(|a| out.axes.contains(a)));
        let arity = match m {
            Member::Binary(_) => 2,
            _ => 1,
        };
        (fits && dr.ins.len() == arity).then_some((m, o))
    }

    /// Replaces groups of elementwise drafts by fused kernels. `outs` are the diagram's
    /// outputs (always written to memory).
    pub(super) fn fuse(&mut self, outs: &[usize], unfused: &[usize]) -> usize {
        let nvals = self.vals.len();
        let root = |v: usize| self.vals[v].root;
        // Which drafts (kernels only) read each root.
        let mut readers: Vec<Vec<usize>> = vec![Vec::new(); nvals];
        for (s, dr) in self.drafts.iter().enumerate() {
            if let Action::Kernel(_) = dr.action {
                for v in &dr.ins {
                    readers[root(*v)].push(s);
                }
            }
        }
        let mut is_out = vec![false; nvals];
        for v in outs {
            is_out[root(*v)] = true;
        }

        // Group consecutive members.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut cur: Vec<usize> = Vec::new();
        let mut cur_axes: Vec<AxisId> = Vec::new();
        let mut cur_made: Vec<usize> = Vec::new();
        let mut cur_ext: Vec<usize> = Vec::new();
        for s in 0..self.drafts.len() {
            let dr = &self.drafts[s];
            if matches!(dr.action, Action::Check(_)) {
                continue;
            }
            let Some((_, o)) = self.member(dr) else {
                if !cur.is_empty() {
                    groups.push(std::mem::take(&mut cur));
                }
                continue;
            };
            let axes = self.vals[o].axes.clone();
            let joins = !cur.is_empty() && axes == cur_axes && {
                let mut ext = cur_ext.clone();
                let ok = dr.ins.iter().all(|v| {
                    if cur_made.contains(&root(*v)) {
                        self.vals[*v].axes == cur_axes
                    } else {
                        if !ext.contains(v) {
                            ext.push(*v);
                        }
                        true
                    }
                });
                ok && ext.len() + cur.len() < MAX_OPERANDS
            };
            if !joins {
                if !cur.is_empty() {
                    groups.push(std::mem::take(&mut cur));
                }
                cur_axes = axes;
                cur_made.clear();
                cur_ext.clear();
            }
            for v in &dr.ins {
                if !cur_made.contains(&root(*v)) && !cur_ext.contains(v) {
                    cur_ext.push(*v);
                }
            }
            cur.push(s);
            cur_made.push(o);
        }
        if !cur.is_empty() {
            groups.push(cur);
        }
        // A lone copy gains nothing from code generation.
        groups.retain(|g| {
            g.len() > 1
                || !matches!(
                    self.member(&self.drafts[g[0]]),
                    Some((Member::Copy, _)) | None
                )
        });

        // Programs, operands and nests.
        struct Built {
            members: Vec<usize>,
            ext: Vec<usize>,
            stores: Vec<usize>,
            internal: Vec<usize>,
        }
        let mut built: Vec<Built> = Vec::new();
        let mut jobs: Vec<(Program, DynNest)> = Vec::new();
        for g in groups {
            let first_out = self.drafts[g[0]].outs[0];
            let axes = self.vals[first_out].axes.clone();
            let mut ext: Vec<usize> = Vec::new();
            let mut insts: Vec<Inst> = Vec::new();
            let mut ssa_of: Vec<(usize, usize)> = Vec::new(); // (root, ssa)
            let mut load_of: Vec<(usize, usize)> = Vec::new(); // (val, ssa)
            let mut outs_of: Vec<(usize, usize)> = Vec::new(); // (member out, ssa)
            for s in &g {
                let Some((m, o)) = self.member(&self.drafts[*s]) else {
                    continue;
                };
                let mut args = Vec::new();
                for v in &self.drafts[*s].ins {
                    let r = root(*v);
                    let a = if let Some((_, x)) = ssa_of.iter().find(|(rr, _)| *rr == r) {
                        *x
                    } else if let Some((_, x)) = load_of.iter().find(|(vv, _)| vv == v) {
                        *x
                    } else {
                        let k = ext.len();
                        ext.push(*v);
                        insts.push(Inst::Load(k));
                        load_of.push((*v, insts.len() - 1));
                        insts.len() - 1
                    };
                    args.push(a);
                }
                let inst = match m {
                    Member::Unary(Unary::Scale(c)) => Inst::Scale(args[0], c),
                    Member::Unary(Unary::Shift(c)) => Inst::Shift(args[0], c),
                    Member::Unary(Unary::Map(f)) => Inst::Map(f, args[0]),
                    Member::Unary(Unary::Pow(_)) => unreachable!("pow is never a member"),
                    Member::Binary(Binary::Add) => Inst::Add(args[0], args[1]),
                    Member::Binary(Binary::Sub) => Inst::Sub(args[0], args[1]),
                    Member::Binary(Binary::Mul) => Inst::Mul(args[0], args[1]),
                    Member::Binary(Binary::Div) => Inst::Div(args[0], args[1]),
                    Member::Binary(Binary::Max) => Inst::Max(args[0], args[1]),
                    Member::Binary(Binary::Min) => Inst::Min(args[0], args[1]),
                    Member::Binary(Binary::MapBack(f)) => Inst::MapBack(f, args[0], args[1]),
                    Member::Dropout { p, key } => Inst::Dropout { p, key, x: args[0] },
                    Member::Copy => {
                        // The copy's value is its input's: no instruction.
                        ssa_of.push((o, args[0]));
                        outs_of.push((o, args[0]));
                        continue;
                    }
                };
                insts.push(inst);
                ssa_of.push((o, insts.len() - 1));
                outs_of.push((o, insts.len() - 1));
            }
            let mut stores = Vec::new();
            let mut store_ssa = Vec::new();
            let mut internal = Vec::new();
            for (o, x) in &outs_of {
                let outside = is_out[*o] || readers[*o].iter().any(|r| !g.contains(r));
                if outside {
                    stores.push(*o);
                    store_ssa.push(*x);
                } else {
                    internal.push(*o);
                }
            }
            let nops = ext.len() + stores.len();
            let dims = axes
                .iter()
                .map(|a| {
                    let mut s: Vec<usize> = ext.iter().map(|v| self.stride(*v, *a)).collect();
                    s.extend(stores.iter().map(|v| self.stride(*v, *a)));
                    s.push(self.stride(first_out, *a));
                    (self.size(*a), s)
                })
                .collect();
            let program = Program {
                insts,
                inputs: ext.len(),
                stores: store_ssa,
            };
            jobs.push((program, DynNest::new(dims, nops + 1)));
            built.push(Built {
                members: g,
                ext,
                stores,
                internal,
            });
        }
        if jobs.is_empty() {
            return 0;
        }

        // Splice the fused steps in (those the caller did not exclude).
        let compiled: Vec<Option<FusedGroup>> = jobs
            .into_iter()
            .enumerate()
            .map(|(id, (program, nest))| {
                (!unfused.contains(&id)).then_some(FusedGroup { id, program, nest })
            })
            .collect();
        let mut first_of: Vec<Option<Draft>> = (0..self.drafts.len()).map(|_| None).collect();
        let mut gone = vec![false; self.drafts.len()];
        let mut internal = vec![false; nvals];
        let mut fused = 0;
        for (b, f) in built.into_iter().zip(compiled) {
            let Some(f) = f else { continue };
            fused += 1;
            for m in &b.members {
                gone[*m] = true;
            }
            for v in &b.internal {
                internal[*v] = true;
            }
            let inplace = match b.stores.first() {
                Some(o) => self.inplace(&b.ext, *o),
                None => vec![],
            };
            let first = &self.drafts[b.members[0]];
            let label = if b.members.len() == 1 {
                first.label.clone()
            } else {
                let last = &self.drafts[b.members[b.members.len() - 1]];
                format!("{} to {} (fused)", first.label, last.label)
            };
            first_of[b.members[0]] = Some(Draft {
                action: Action::Kernel(Kernel::Fused(Box::new(f))),
                ins: b.ext,
                outs: b.stores,
                inplace,
                label,
            });
        }
        let old = std::mem::take(&mut self.drafts);
        for (s, dr) in old.into_iter().enumerate() {
            if let Some(f) = first_of[s].take() {
                self.drafts.push(f);
            } else if gone[s] {
                continue;
            } else if matches!(dr.action, Action::Check(_))
                && dr.ins.iter().any(|v| internal[root(*v)])
            {
                // A `check_finite` point on a value that is never written.
                continue;
            } else {
                self.drafts.push(dr);
            }
        }
        for v in &mut self.vals {
            v.def = 0;
        }
        for s in 0..self.drafts.len() {
            for o in self.drafts[s].outs.clone() {
                self.vals[o].def = s;
            }
        }
        fused
    }
}
