//! What is drawn: the drawable graph of one diagram, with composite boxes expanded.
//!
//! Every box becomes a node; every wire becomes one edge, into its sink. Region ports (zip,
//! broadcast, collect; loop_in, capture, loop_out) are nodes of their region's group marked
//! [`Role::Entry`] or [`Role::Exit`], so the layout puts them on the frame's lower and upper
//! edges. An expanded composite box becomes a group with one entry node per input of the callee
//! and one exit node per output; the caller's wires end and start there and the callee's wires
//! continue inside. The diagram's own inputs and outputs are the entries and exits of the root
//! group.

use super::{DrawError, DrawOptions, Highlight, MAX_EXPAND};
use crate::ir::print::{box_text, hyper_arg, param_text};
use crate::ir::{
    AxisTable, BoxId, BoxKind, Callee, Const, Diagram, HyperArg, Op, Program, RegionKind, WireId,
};

/// A picture never has more nodes than this: expansion stops before it, and a diagram that has
/// more boxes by itself is refused.
pub const MAX_NODES: usize = 20_000;

pub type NodeId = usize;
pub type GroupId = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoxStyle {
    /// Fixed arithmetic.
    Primitive,
    /// Reshapes: rename, split, merge, broadcast along a new axis.
    Structural,
    /// Boxes with parameters.
    Learned,
    /// A composite box drawn closed.
    Composite,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortShape {
    Zip,
    Broadcast,
    Collect,
    LoopIn,
    Capture,
    LoopOut,
    /// An input of an expanded composite.
    Enter,
    /// An output of an expanded composite.
    Leave,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A rectangle with a label.
    Box(BoxStyle),
    /// A parameter (a state): a red triangle.
    Param,
    /// A copy: a dot, one wire in, several out.
    Fork,
    /// A discard: a cap on its wire.
    Cap,
    /// A port on a region's or composite's frame.
    Port(PortShape),
    /// A diagram input (its name under the wire).
    Input,
    /// A diagram output.
    Output,
}

/// Where the layout puts a node within its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Inner,
    /// On the lower edge (first layer).
    Entry,
    /// On the upper edge (last layer).
    Exit,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub shape: Shape,
    /// The text drawn in or beside the node (empty for dots and ports).
    pub label: String,
    /// The tooltip: the op as the IR prints it, and parameters.
    pub title: String,
    pub group: GroupId,
    pub role: Role,
    pub inputs: usize,
    pub outputs: usize,
    /// Whether a red parameter triangle is attached (learned boxes).
    pub params: bool,
    /// The lane axes its parameters are per-lane over.
    pub per_lane: Vec<String>,
    /// For entries and exits whose order is part of a signature (diagram and composite
    /// boundaries): their position in it. Region ports are free (`None`).
    pub fixed: Option<usize>,
    pub highlight: bool,
    /// For an operation whose inputs do not commute, what its first input is (`numerator` of
    /// `div`, `minuend` of `sub`): the picture marks where that wire enters.
    pub first_input: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum GroupKind {
    /// The whole diagram (no frame).
    Root,
    /// A SIMD region, with its axis.
    Simd(String),
    /// A repeat region, with its count.
    Repeat(String),
    /// An expanded composite box, with its label.
    Composite(String),
}

#[derive(Clone, Debug)]
pub struct Group {
    pub kind: GroupKind,
    pub parent: Option<GroupId>,
    pub highlight: bool,
}

impl Group {
    /// The caption drawn at the frame's top left.
    pub fn caption(&self) -> String {
        match &self.kind {
            GroupKind::Root => String::new(),
            GroupKind::Simd(a) => format!("simd {a}"),
            GroupKind::Repeat(c) => format!("repeat {c}"),
            GroupKind::Composite(n) => n.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Edge {
    pub from: NodeId,
    pub from_port: usize,
    pub to: NodeId,
    pub to_port: usize,
    /// The type drawn beside the wire where it starts, after the wire's name when it has one
    /// (`s: [tok, src]`); `None` where it would repeat the type just drawn (the branches of a
    /// fork, a wire through a port that does not change it).
    pub label: Option<String>,
    /// The tooltip: the wire's name and type.
    pub title: String,
    pub highlight: bool,
}

#[derive(Clone, Debug)]
pub struct Graph {
    /// The diagram's signature, drawn above the picture.
    pub title: String,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// Parents come before their children; 0 is the root.
    pub groups: Vec<Group>,
}

/// Builds the drawable graph of `d`, expanding composites `opts.expand` levels deep.
pub fn build(program: &Program, d: &Diagram, opts: &DrawOptions) -> Result<Graph, DrawError> {
    if d.boxes.len() + d.inputs.len() + d.outputs.len() > MAX_NODES {
        return Err(DrawError::TooLarge(format!(
            "`{}` has {} boxes; diagc draws up to {MAX_NODES}",
            d.name,
            d.boxes.len()
        )));
    }
    let mut b = Builder {
        program,
        axes: &program.axes,
        g: Graph {
            title: signature(d, &program.axes),
            nodes: Vec::new(),
            edges: Vec::new(),
            groups: vec![Group {
                kind: GroupKind::Root,
                parent: None,
                highlight: false,
            }],
        },
        stack: vec![d.name.clone()],
        incoming: Vec::new(),
    };
    let env = top_env(d);
    let mut sources = Vec::new();
    for (k, w) in d.inputs.iter().enumerate() {
        let name = d.input_names.get(k).cloned().unwrap_or_default();
        let ty = d.wire(*w).ty.display(b.axes).to_string();
        let n = b.node(Shape::Input, 0, Role::Entry, 0, 1);
        b.g.nodes[n].label = name.clone();
        b.g.nodes[n].title = format!("input {name}: {ty}");
        b.g.nodes[n].fixed = Some(k);
        sources.push(Some((n, 0)));
    }
    let depth = opts.expand.min(MAX_EXPAND);
    let outs = b.diagram(d, &env, 0, &sources, depth, Some(&opts.highlight));
    for (k, (src, w)) in outs.iter().zip(&d.outputs).enumerate() {
        let n = b.node(Shape::Output, 0, Role::Exit, 1, 0);
        let ty = d.wire(*w).ty.display(b.axes).to_string();
        b.g.nodes[n].title = format!("output {k}: {ty}");
        b.g.nodes[n].fixed = Some(k);
        let hl = opts.highlight.wires.contains(w);
        b.edge(*src, (n, 0), d, *w, hl);
    }
    Ok(b.g)
}

/// `name(x: [tok, dm]) -> [tok, dm]`.
fn signature(d: &Diagram, axes: &AxisTable) -> String {
    let ins: Vec<String> = d
        .input_names
        .iter()
        .zip(&d.inputs)
        .map(|(n, w)| format!("{n}: {}", d.wire(*w).ty.display(axes)))
        .collect();
    let outs: Vec<String> = d
        .outputs
        .iter()
        .map(|w| d.wire(*w).ty.display(axes).to_string())
        .collect();
    let outs = if outs.len() == 1 {
        outs[0].clone()
    } else {
        format!("({})", outs.join(", "))
    };
    format!("{}({}) -> {outs}", d.name, ins.join(", "))
}

/// Diagram-valued hyperparameters in scope: name and the diagram it stands for, when known.
type Env = Vec<(String, Option<String>)>;

fn top_env(d: &Diagram) -> Env {
    d.hypers
        .iter()
        .map(|h| {
            let v = match &h.default {
                Some(HyperArg::Diagram(Callee::Diagram(n))) => Some(n.clone()),
                _ => None,
            };
            (h.name.clone(), v)
        })
        .collect()
}

fn lookup(env: &Env, name: &str) -> Option<String> {
    env.iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.clone())
}

struct Builder<'a> {
    program: &'a Program,
    axes: &'a AxisTable,
    g: Graph,
    /// The diagrams being expanded, outermost first (a diagram is not expanded inside itself).
    stack: Vec<String>,
    /// The type of the last wire drawn into each node.
    incoming: Vec<Option<String>>,
}

impl Builder<'_> {
    fn node(
        &mut self,
        shape: Shape,
        group: GroupId,
        role: Role,
        inputs: usize,
        outputs: usize,
    ) -> NodeId {
        self.incoming.push(None);
        self.g.nodes.push(Node {
            shape,
            label: String::new(),
            title: String::new(),
            group,
            role,
            inputs,
            outputs,
            params: false,
            per_lane: Vec::new(),
            fixed: None,
            highlight: false,
            first_input: None,
        });
        self.g.nodes.len() - 1
    }

    fn group(&mut self, kind: GroupKind, parent: GroupId, highlight: bool) -> GroupId {
        self.g.groups.push(Group {
            kind,
            parent: Some(parent),
            highlight,
        });
        self.g.groups.len() - 1
    }

    /// The edge for wire `w` of `d`, from `src` (when the wire's source was drawn) to `to`.
    fn edge(
        &mut self,
        src: Option<(NodeId, usize)>,
        to: (NodeId, usize),
        d: &Diagram,
        w: WireId,
        highlight: bool,
    ) {
        let Some((from, from_port)) = src else {
            return;
        };
        let wire = d.wire(w);
        let ty = wire.ty.display(self.axes).to_string();
        let title = match &wire.name {
            Some(n) => format!("{n}: {ty}"),
            None => ty.clone(),
        };
        // A wire that continues another through a fork, or through a port without changing
        // type: its type is already drawn on the wire coming in.
        let repeats = match self.g.nodes[from].shape {
            Shape::Fork => true,
            Shape::Port(_) => self.incoming[from].as_deref() == Some(ty.as_str()),
            _ => false,
        };
        if self.incoming.len() <= to.0 {
            self.incoming.resize(to.0 + 1, None);
        }
        self.incoming[to.0] = Some(ty.clone());
        // A named wire is labelled with its name and type (`s: [tok, src]`).
        let label = match (&wire.name, repeats) {
            (_, true) => None,
            (Some(n), false) if !n.is_empty() => Some(format!("{n}: {ty}")),
            _ => Some(ty),
        };
        self.g.edges.push(Edge {
            from,
            from_port,
            to: to.0,
            to_port: to.1,
            label,
            title,
            highlight,
        });
    }

    /// Adds the boxes of `d` to `group`, with its inputs coming from `inputs`; returns where its
    /// outputs come from. `hl` is the highlight, for the top-level diagram only.
    fn diagram(
        &mut self,
        d: &Diagram,
        env: &Env,
        group: GroupId,
        inputs: &[Option<(NodeId, usize)>],
        depth: usize,
        hl: Option<&Highlight>,
    ) -> Vec<Option<(NodeId, usize)>> {
        let mut src: Vec<Option<(NodeId, usize)>> = vec![None; d.wires.len()];
        for (k, w) in d.inputs.iter().enumerate() {
            if let (Some(slot), Some(s)) = (src.get_mut(w.0 as usize), inputs.get(k)) {
                *slot = *s;
            }
        }
        // Regions become groups; a region's parent is mapped before it.
        let mut region_group: Vec<Option<GroupId>> = vec![None; d.regions.len()];
        let box_hl = |b: usize| hl.is_some_and(|h| h.boxes.contains(&BoxId(b as u32)));
        let wire_hl = |w: WireId| hl.is_some_and(|h| h.wires.contains(&w));
        for (bi, b) in d.boxes.iter().enumerate() {
            let mut g = group;
            for r in d.region_chain(b.region) {
                g = match region_group[r.0 as usize] {
                    Some(g) => g,
                    None => {
                        let kind = match &d.region(r).kind {
                            RegionKind::Simd(a) => GroupKind::Simd(self.axes.name(*a).to_string()),
                            RegionKind::Repeat(c) => {
                                GroupKind::Repeat(c.display(self.axes).to_string())
                            }
                        };
                        let id = self.group(kind, g, false);
                        region_group[r.0 as usize] = Some(id);
                        id
                    }
                };
            }
            if let Some(outs) = self.expand(d, bi, env, g, &src, depth, hl) {
                for (w, s) in b.outputs.iter().zip(outs) {
                    src[w.0 as usize] = s;
                }
                continue;
            }
            let n = self.box_node(d, bi, env, g);
            self.g.nodes[n].highlight = box_hl(bi);
            for (k, w) in b.inputs.iter().enumerate() {
                self.edge(src[w.0 as usize], (n, k), d, *w, wire_hl(*w));
            }
            for (k, w) in b.outputs.iter().enumerate() {
                src[w.0 as usize] = Some((n, k));
            }
        }
        d.outputs.iter().map(|w| src[w.0 as usize]).collect()
    }

    /// The node of box `bi` of `d`, drawn as itself (not expanded).
    fn box_node(&mut self, d: &Diagram, bi: usize, env: &Env, group: GroupId) -> NodeId {
        let b = &d.boxes[bi];
        let (shape, role) = match &b.op {
            Op::Copy(_) => (Shape::Fork, Role::Inner),
            Op::Discard => (Shape::Cap, Role::Inner),
            Op::Zip(_) => (Shape::Port(PortShape::Zip), Role::Entry),
            Op::Broadcast(_) => (Shape::Port(PortShape::Broadcast), Role::Entry),
            Op::Collect(_) => (Shape::Port(PortShape::Collect), Role::Exit),
            Op::LoopIn => (Shape::Port(PortShape::LoopIn), Role::Entry),
            Op::Capture => (Shape::Port(PortShape::Capture), Role::Entry),
            Op::LoopOut => (Shape::Port(PortShape::LoopOut), Role::Exit),
            // A frozen random tensor is not learned: drawn as a primitive box.
            Op::Param(_)
                if b.params
                    .first()
                    .is_some_and(|p| p.role.starts_with("frozen")) =>
            {
                (Shape::Box(BoxStyle::Primitive), Role::Inner)
            }
            Op::Param(_) => (Shape::Param, Role::Inner),
            op => {
                let style = match op.kind() {
                    BoxKind::Structural => BoxStyle::Structural,
                    BoxKind::Primitive => BoxStyle::Primitive,
                    BoxKind::Learned => BoxStyle::Learned,
                    BoxKind::Composite => BoxStyle::Composite,
                };
                (Shape::Box(style), Role::Inner)
            }
        };
        // A region port outside any region (which the checker never produces) is drawn as a
        // plain node rather than on a frame that does not exist.
        let role = if group == 0 && b.region.is_none() {
            Role::Inner
        } else {
            role
        };
        let n = self.node(shape, group, role, b.inputs.len(), b.outputs.len());
        let mut title = box_text(b, self.axes);
        for p in &b.params {
            title.push('\n');
            title.push_str(&param_text(p, self.axes));
        }
        let label = match &b.op {
            Op::Call { callee, hypers } => call_label(callee, hypers, env, self.axes),
            Op::Copy(_) | Op::Discard => String::new(),
            _ if matches!(shape, Shape::Port(_)) => String::new(),
            _ => box_text(b, self.axes),
        };
        let mut per_lane: Vec<String> = Vec::new();
        for p in &b.params {
            for a in &p.per_lane {
                let name = self.axes.name(*a).to_string();
                if !per_lane.contains(&name) {
                    per_lane.push(name);
                }
            }
        }
        // A per-lane state: `param[]` inside `simd head` was written `param[head]`.
        let label = if shape == Shape::Param && !per_lane.is_empty() {
            format!("{label} per {}", per_lane.join(", "))
        } else {
            label
        };
        // A learned box marked `trainable = false` says so, and has no parameter triangles:
        // nothing in it is learned.
        let frozen = b.params.iter().any(|p| !p.trainable);
        let label = if frozen {
            format!("{label} (frozen)")
        } else {
            label
        };
        let node = &mut self.g.nodes[n];
        node.title = title;
        node.label = label;
        node.params = shape == Shape::Box(BoxStyle::Learned) && !b.params.is_empty() && !frozen;
        node.per_lane = per_lane;
        node.first_input = match b.op {
            Op::Div => Some("numerator"),
            Op::Sub => Some("minuend"),
            _ => None,
        };
        n
    }

    /// Expands box `bi` of `d` into a frame when it is a composite call that can be expanded
    /// here; returns where its outputs come from.
    #[allow(clippy::too_many_arguments)]
    fn expand(
        &mut self,
        d: &Diagram,
        bi: usize,
        env: &Env,
        group: GroupId,
        src: &[Option<(NodeId, usize)>],
        depth: usize,
        hl: Option<&Highlight>,
    ) -> Option<Vec<Option<(NodeId, usize)>>> {
        let b = &d.boxes[bi];
        let Op::Call { callee, hypers } = &b.op else {
            return None;
        };
        if depth == 0 {
            return None;
        }
        let name = match callee {
            Callee::Diagram(n) => Some(n.clone()),
            Callee::Hyper(h) => lookup(env, h),
        }?;
        let program = self.program;
        let c = program.diagram(&name)?;
        let fits =
            self.g.nodes.len() + c.boxes.len() + c.inputs.len() + c.outputs.len() <= MAX_NODES;
        if !fits
            || self.stack.contains(&name)
            || c.inputs.len() != b.inputs.len()
            || c.outputs.len() != b.outputs.len()
        {
            return None;
        }
        // The callee's diagram hyperparameters: what the call passes, else their defaults.
        let inner_env: Env = c
            .hypers
            .iter()
            .map(|h| {
                let arg = hypers.iter().find(|(k, _)| *k == h.name).map(|(_, v)| v);
                let v = match arg.or(h.default.as_ref()) {
                    Some(HyperArg::Diagram(Callee::Diagram(n))) => Some(n.clone()),
                    Some(HyperArg::Diagram(Callee::Hyper(x))) => lookup(env, x),
                    _ => None,
                };
                (h.name.clone(), v)
            })
            .collect();
        let caption = call_label(callee, hypers, env, self.axes);
        let highlight = hl.is_some_and(|h| h.boxes.contains(&BoxId(bi as u32)));
        let g = self.group(GroupKind::Composite(caption), group, highlight);
        let mut ins = Vec::new();
        for (k, w) in b.inputs.iter().enumerate() {
            let n = self.node(Shape::Port(PortShape::Enter), g, Role::Entry, 1, 1);
            let pname = c.input_names.get(k).cloned().unwrap_or_default();
            self.g.nodes[n].title = format!("{name} input {pname}");
            self.g.nodes[n].fixed = Some(k);
            let wire_hl = hl.is_some_and(|h| h.wires.contains(w));
            self.edge(src[w.0 as usize], (n, 0), d, *w, wire_hl);
            ins.push(Some((n, 0)));
        }
        self.stack.push(name);
        let outs = self.diagram(c, &inner_env, g, &ins, depth - 1, None);
        self.stack.pop();
        let mut result = Vec::new();
        for (k, (s, w)) in outs.iter().zip(&c.outputs).enumerate() {
            let n = self.node(Shape::Port(PortShape::Leave), g, Role::Exit, 1, 1);
            self.g.nodes[n].title = format!("{} output {k}", c.name);
            self.g.nodes[n].fixed = Some(k);
            self.edge(*s, (n, 0), c, *w, false);
            result.push(Some((n, 0)));
        }
        Some(result)
    }
}

/// A call as drawn: `block[mech, p]`, `mech (m1)` for a diagram-valued hyperparameter that is
/// known to stand for `m1`.
fn call_label(
    callee: &Callee,
    hypers: &[(String, HyperArg)],
    env: &Env,
    axes: &AxisTable,
) -> String {
    let mut s = match callee {
        Callee::Diagram(n) => n.clone(),
        Callee::Hyper(h) => match lookup(env, h) {
            Some(d) => format!("{h} ({d})"),
            None => h.clone(),
        },
    };
    if !hypers.is_empty() {
        let parts: Vec<String> = hypers
            .iter()
            .map(|(k, v)| match v {
                HyperArg::Diagram(Callee::Hyper(h)) | HyperArg::Num(Const::Hyper(h)) if h == k => {
                    k.clone()
                }
                v => format!("{k} = {}", hyper_arg(v, axes)),
            })
            .collect();
        s.push('[');
        s.push_str(&parts.join(", "));
        s.push(']');
    }
    s
}
