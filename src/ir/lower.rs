//! Lowering SIMD regions into a flat graph for execution.
//!
//! Lifting a box by a region's axis `a` means running it on every lane at once. With named axes
//! that is only a change of types: every wire inside the region gains `a` (in front), and every op
//! already runs lane-wise over the axes it does not name. So:
//! - [`Op::Zip`] and [`Op::Collect`] disappear (the outer wire already is the lifted inner one);
//! - [`Op::Broadcast`] becomes an explicit [`Op::Expand`] along `a`;
//! - a box with no inputs (a parameter, positional encodings) produces a wire without `a` unless
//!   its parameters are per-lane over `a`, so an [`Op::Expand`] follows it;
//! - per-lane parameters keep `per_lane`: their tensors carry those axes, aligned by name with the
//!   lifted inputs. Shared parameters do not carry them.
//!
//! Repeat regions are not SIMD and stay as they are.

use super::*;

/// Returns `d` with every SIMD region lowered away.
pub fn lower_simd(d: &Diagram) -> Diagram {
    let mut out = Diagram {
        name: d.name.clone(),
        hypers: d.hypers.clone(),
        input_names: d.input_names.clone(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        wires: Vec::new(),
        boxes: Vec::new(),
        regions: Vec::new(),
        span: d.span,
    };
    // Repeat regions survive; SIMD regions map to their nearest surviving ancestor.
    let mut region_map: Vec<Option<RegionId>> = Vec::with_capacity(d.regions.len());
    for r in &d.regions {
        let parent = r.parent.and_then(|p| region_map[p.0 as usize]);
        match r.kind {
            RegionKind::Simd(_) => region_map.push(parent),
            RegionKind::Repeat(_) => {
                out.regions.push(Region {
                    kind: r.kind.clone(),
                    parent,
                    span: r.span,
                });
                region_map.push(Some(RegionId(out.regions.len() as u32 - 1)));
            }
        }
    }
    let map_region = |r: Option<RegionId>| r.and_then(|r| region_map[r.0 as usize]);
    let lanes = |r: Option<RegionId>| -> Vec<AxisId> {
        d.region_chain(r)
            .into_iter()
            .filter_map(|id| match d.region(id).kind {
                RegionKind::Simd(a) => Some(a),
                RegionKind::Repeat(_) => None,
            })
            .collect()
    };
    let lifted = |ty: &WireType, lanes: &[AxisId]| -> WireType {
        lanes.iter().rev().fold(ty.clone(), |t, a| t.with_front(*a))
    };

    let mut map: Vec<Option<WireId>> = vec![None; d.wires.len()];
    let new_wire = |out: &mut Diagram, ty: WireType, old: &Wire, source: WireSource, region| {
        out.wires.push(Wire {
            ty,
            name: old.name.clone(),
            source,
            sink: None,
            region,
            span: old.span,
        });
        WireId(out.wires.len() as u32 - 1)
    };
    for (k, w) in d.inputs.iter().enumerate() {
        let old = d.wire(*w);
        let nw = new_wire(&mut out, old.ty.clone(), old, WireSource::Input(k), None);
        out.inputs.push(nw);
        map[w.0 as usize] = Some(nw);
    }
    for b in &d.boxes {
        let ins: Vec<WireId> = b
            .inputs
            .iter()
            .map(|w| map[w.0 as usize].expect("topological order"))
            .collect();
        let region = map_region(b.region);
        let lane_axes = lanes(b.region);
        match &b.op {
            Op::Zip(_) | Op::Collect(_) => {
                map[b.outputs[0].0 as usize] = Some(ins[0]);
                // A collected value named only outside the region keeps that name.
                if matches!(b.op, Op::Collect(_)) && out.wires[ins[0].0 as usize].name.is_none() {
                    out.wires[ins[0].0 as usize].name = d.wire(b.outputs[0]).name.clone();
                }
                continue;
            }
            Op::Broadcast(a) => {
                let old = d.wire(b.outputs[0]);
                let id = BoxId(out.boxes.len() as u32);
                let nw = new_wire(
                    &mut out,
                    lifted(&old.ty, &lane_axes),
                    old,
                    WireSource::Box(id, 0),
                    region,
                );
                out.boxes.push(BoxNode {
                    op: Op::Expand(*a),
                    inputs: ins,
                    outputs: vec![nw],
                    params: vec![],
                    region,
                    span: b.span,
                });
                map[b.outputs[0].0 as usize] = Some(nw);
                continue;
            }
            _ => {}
        }
        let id = BoxId(out.boxes.len() as u32);
        // A box with no inputs only carries the lane axes its parameters are per-lane over (and
        // an `iota` over a lane axis that axis: each lane's index); the others are expanded.
        let carried: Vec<AxisId> = if b.inputs.is_empty() {
            let mut per: Vec<AxisId> = b
                .params
                .iter()
                .flat_map(|p| p.per_lane.iter().copied())
                .collect();
            if let Op::Iota(a) = b.op {
                per.push(a);
            }
            lane_axes
                .iter()
                .copied()
                .filter(|a| per.contains(a))
                .collect()
        } else {
            lane_axes.clone()
        };
        let mut outs = Vec::new();
        for (k, w) in b.outputs.iter().enumerate() {
            let old = d.wire(*w);
            outs.push(new_wire(
                &mut out,
                lifted(&old.ty, &carried),
                old,
                WireSource::Box(id, k),
                region,
            ));
        }
        out.boxes.push(BoxNode {
            op: b.op.clone(),
            inputs: ins,
            outputs: outs.clone(),
            params: b.params.clone(),
            region,
            span: b.span,
        });
        for (k, w) in b.outputs.iter().enumerate() {
            let mut cur = outs[k];
            // Expand along the lane axes the box did not produce, innermost first so the final
            // layout is outer lanes first.
            for a in lane_axes.iter().rev().filter(|a| !carried.contains(a)) {
                let old = d.wire(*w);
                let eid = BoxId(out.boxes.len() as u32);
                let ty = out.wires[cur.0 as usize].ty.with_front(*a);
                let nw = new_wire(&mut out, ty, old, WireSource::Box(eid, 0), region);
                out.boxes.push(BoxNode {
                    op: Op::Expand(*a),
                    inputs: vec![cur],
                    outputs: vec![nw],
                    params: vec![],
                    region,
                    span: b.span,
                });
                cur = nw;
            }
            map[w.0 as usize] = Some(cur);
        }
    }
    out.outputs = d
        .outputs
        .iter()
        .map(|w| map[w.0 as usize].expect("outputs are produced"))
        .collect();
    recompute_sinks(&mut out);
    out
}

/// Sets every wire's sink from the boxes' inputs and the diagram's outputs.
pub fn recompute_sinks(d: &mut Diagram) {
    for w in &mut d.wires {
        w.sink = None;
    }
    for (bi, b) in d.boxes.iter().enumerate() {
        for (k, w) in b.inputs.iter().enumerate() {
            d.wires[w.0 as usize].sink = Some(WireSink::Box(BoxId(bi as u32), k));
        }
    }
    for (k, w) in d.outputs.iter().enumerate() {
        d.wires[w.0 as usize].sink = Some(WireSink::Output(k));
    }
}
