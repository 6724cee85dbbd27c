//! Building diagrams programmatically. While building, a wire may feed several boxes; [`Graph::
//! finish`] restores the IR invariants by inserting a copy box after every wire used more than
//! once and a discard box after every wire never used, right after its producer.

use super::*;
use std::collections::BTreeMap;

#[derive(Default)]
pub struct Graph {
    pub wires: Vec<Wire>,
    pub boxes: Vec<BoxNode>,
    pub inputs: Vec<WireId>,
    pub input_names: Vec<String>,
}

impl Graph {
    pub fn ty(&self, w: WireId) -> &WireType {
        &self.wires[w.0 as usize].ty
    }

    /// A new wire, not yet connected.
    pub fn wire(&mut self, ty: WireType, name: Option<String>, span: Span) -> WireId {
        self.wires.push(Wire {
            ty,
            name,
            source: WireSource::Input(0),
            sink: None,
            region: None,
            span,
        });
        WireId(self.wires.len() as u32 - 1)
    }

    /// A new diagram input.
    pub fn input(&mut self, ty: WireType, name: String, span: Span) -> WireId {
        let w = self.wire(ty, Some(name.clone()), span);
        self.inputs.push(w);
        self.input_names.push(name);
        w
    }

    /// Adds a box; returns its output wires.
    pub fn add(
        &mut self,
        op: Op,
        inputs: Vec<WireId>,
        out: Vec<WireType>,
        span: Span,
    ) -> Vec<WireId> {
        let outs: Vec<WireId> = out.into_iter().map(|t| self.wire(t, None, span)).collect();
        self.boxes.push(BoxNode {
            op,
            inputs,
            outputs: outs.clone(),
            params: vec![],
            region: None,
            span,
        });
        outs
    }

    /// A box with one output.
    pub fn add1(&mut self, op: Op, inputs: Vec<WireId>, out: WireType, span: Span) -> WireId {
        self.add(op, inputs, vec![out], span)[0]
    }

    /// The finished diagram: copies and discards inserted, sources and sinks set. Boxes must
    /// have been added in a topological order.
    pub fn finish(mut self, name: String, outputs: Vec<WireId>, span: Span) -> Diagram {
        let mut uses: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.wires.len()];
        for (bi, b) in self.boxes.iter().enumerate() {
            for (k, w) in b.inputs.iter().enumerate() {
                uses[w.0 as usize].push((bi, k));
            }
        }
        let mut out_uses: Vec<Vec<usize>> = vec![Vec::new(); self.wires.len()];
        for (k, w) in outputs.iter().enumerate() {
            out_uses[w.0 as usize].push(k);
        }
        let mut outputs = outputs;
        let mut after: BTreeMap<u32, BoxNode> = BTreeMap::new();
        for i in 0..self.wires.len() {
            let n = uses[i].len() + out_uses[i].len();
            let span = self.wires[i].span;
            let (ty, name) = (self.wires[i].ty.clone(), self.wires[i].name.clone());
            let w = WireId(i as u32);
            if n == 0 {
                after.insert(
                    i as u32,
                    BoxNode {
                        op: Op::Discard,
                        inputs: vec![w],
                        outputs: vec![],
                        params: vec![],
                        region: None,
                        span,
                    },
                );
            } else if n > 1 {
                let mut outs = Vec::new();
                let fresh = |g: &mut Graph| {
                    g.wires.push(Wire {
                        ty: ty.clone(),
                        name: name.clone(),
                        source: WireSource::Input(0),
                        sink: None,
                        region: None,
                        span,
                    });
                    WireId(g.wires.len() as u32 - 1)
                };
                for &(bi, k) in &uses[i] {
                    let c = fresh(&mut self);
                    self.boxes[bi].inputs[k] = c;
                    outs.push(c);
                }
                for &k in &out_uses[i] {
                    let c = fresh(&mut self);
                    outputs[k] = c;
                    outs.push(c);
                }
                after.insert(
                    i as u32,
                    BoxNode {
                        op: Op::Copy(outs.len()),
                        inputs: vec![w],
                        outputs: outs,
                        params: vec![],
                        region: None,
                        span,
                    },
                );
            }
        }
        let old = std::mem::take(&mut self.boxes);
        let mut boxes = Vec::with_capacity(old.len() + after.len());
        for w in &self.inputs {
            boxes.extend(after.remove(&w.0));
        }
        for b in old {
            let outs = b.outputs.clone();
            boxes.push(b);
            for o in outs {
                boxes.extend(after.remove(&o.0));
            }
        }
        // Wires created but never produced nor consumed (none in practice) keep no box.
        let mut d = Diagram {
            name,
            hypers: vec![],
            input_names: self.input_names,
            inputs: self.inputs,
            outputs,
            wires: self.wires,
            boxes,
            regions: vec![],
            span,
        };
        for (k, w) in d.inputs.clone().iter().enumerate() {
            d.wires[w.0 as usize].source = WireSource::Input(k);
        }
        for (bi, b) in d.boxes.iter().enumerate() {
            for (k, o) in b.outputs.iter().enumerate() {
                d.wires[o.0 as usize].source = WireSource::Box(BoxId(bi as u32), k);
            }
        }
        lower::recompute_sinks(&mut d);
        d
    }
}
