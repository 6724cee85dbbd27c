//! The checker: from parsed modules to a typed [`Program`], with every error reported.
//!
//! Phases, in order:
//! 1. [`load`]: parse the root file and, transitively, every module it `use`s (next to the file
//!    first, then the embedded stdlib).
//! 2. Axes: collect every `axis` declaration (axes are global by name), solve their sizes to
//!    symbolic normal forms ([`crate::ir::size::Size`]), and reject cycles and conflicts.
//! 3. Signatures: every diagram's hyperparameters and boundary types.
//! 4. Bodies ([`body`]): elaborate each diagram into IR, typing every wire on the way.
//! 5. Whole program: calls that recurse.
//!
//! The checker never panics on user input and never stops at the first error: a failed
//! sub-expression becomes a poisoned value that silences the errors it would cause downstream.

mod body;
mod prims;

pub use prims::{PRIMITIVES, primitive_names};

use crate::diagnostic::{Code, Diagnostic, did_you_mean};
use crate::ir::size::Size;
use crate::ir::{AxisId, AxisInfo, AxisTable, Callee, HyperArg, HyperType, Op, Program, WireType};
use crate::source::{FileId, SourceMap, Span};
use crate::syntax::{self, ast};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Whether `name` is a primitive box of the prelude.
pub fn is_primitive(name: &str) -> bool {
    prims::is_primitive(name)
}

/// Reports at most this many diagnostics per compilation; the rest are counted.
pub const MAX_DIAGNOSTICS: usize = 200;

/// The result of checking: the program (complete only when there are no diagnostics) and the
/// diagnostics, in a stable order.
pub struct Checked {
    pub program: Program,
    pub diagnostics: Vec<Diagnostic>,
    /// Diagnostics found beyond [`MAX_DIAGNOSTICS`].
    pub suppressed: usize,
}

impl Checked {
    pub fn is_ok(&self) -> bool {
        self.diagnostics.is_empty()
    }
}

/// A parsed file and where its `use`s resolve.
struct Loaded {
    file: FileId,
    module: ast::Module,
}

/// How the checker reads a module that a file on disk `use`s from beside it. The checker
/// reads no file itself: the session ([`crate::session`]) passes the reader, and text given in
/// memory is checked with [`NoFiles`].
pub trait ModuleFiles {
    /// The text of the file at `path` when it exists and can be read, with the key that
    /// identifies it (two paths to one file give one key).
    fn read(&self, path: &Path) -> Option<(String, String)>;

    /// The key [`ModuleFiles::read`] would give the file at `path` (used for the file being
    /// checked, so that a module that `use`s it back is known as the same file).
    fn key(&self, path: &Path) -> String {
        path.to_string_lossy().into_owned()
    }
}

/// A reader that finds no file: only the stdlib resolves `use`.
pub struct NoFiles;

impl ModuleFiles for NoFiles {
    fn read(&self, _: &Path) -> Option<(String, String)> {
        None
    }
}

/// Checks the file `root` (already in `sources`) together with every module it uses.
pub fn check_file(sources: &mut SourceMap, root: FileId, files: &dyn ModuleFiles) -> Checked {
    check_with(sources, root, &[], files)
}

/// Like [`check_file`], with extra modules loaded as if the root `use`d them (the training
/// session adds the chosen mechanism this way).
pub fn check_with(
    sources: &mut SourceMap,
    root: FileId,
    extra_uses: &[&str],
    files: &dyn ModuleFiles,
) -> Checked {
    let mut diags = Vec::new();
    let loaded = load(sources, root, extra_uses, files, &mut diags);
    let mut cx = Ctx {
        diags,
        axes: AxisTable::default(),
        sigs: Vec::new(),
        sig_by_name: HashMap::new(),
        poisoned_axes: Default::default(),
        rules: Vec::new(),
    };
    let modules: Vec<&ast::Module> = loaded.iter().map(|l| &l.module).collect();
    cx.collect_axes(&modules);
    cx.collect_signatures(&modules);
    let mut program = Program::default();
    let mut sides: HashMap<usize, (Option<crate::ir::Diagram>, Option<crate::ir::Diagram>)> =
        HashMap::new();
    for i in 0..cx.sigs.len() {
        let role = cx.sigs[i].rule;
        let d = body::elaborate(&mut cx, i);
        match (role, d) {
            (None, Some(d)) => program.diagrams.push(d),
            (Some((r, rhs)), Some(d)) => {
                let e = sides.entry(r).or_default();
                if rhs { e.1 = Some(d) } else { e.0 = Some(d) }
            }
            (_, None) => {}
        }
    }
    for (r, (head, class)) in cx.rules.iter().enumerate() {
        if let Some((Some(lhs), Some(rhs))) = sides.remove(&r) {
            program.rules.push(crate::ir::Rule {
                name: head.name.text.clone(),
                class: *class,
                lhs,
                rhs,
                span: head.span,
            });
        }
    }
    cx.check_recursion(&program);
    program.axes = cx.axes.clone();
    let mut diagnostics = cx.diags;
    // Stable order: by file, then position, then code.
    diagnostics.sort_by(|a, b| {
        let ka = a.anchor().map(|s| (s.file, s.start, s.end));
        let kb = b.anchor().map(|s| (s.file, s.start, s.end));
        ka.cmp(&kb).then(a.code.cmp(&b.code))
    });
    diagnostics.dedup();
    let suppressed = diagnostics.len().saturating_sub(MAX_DIAGNOSTICS);
    diagnostics.truncate(MAX_DIAGNOSTICS);
    Checked {
        program,
        diagnostics,
        suppressed,
    }
}

/// Where a file lives, for resolving the `use`s inside it.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Origin {
    Disk(PathBuf),
    Stdlib,
    Memory,
}

fn origin_of(name: &str) -> Origin {
    if name.starts_with("<stdlib>/") {
        Origin::Stdlib
    } else if name.starts_with('<') {
        Origin::Memory
    } else {
        Origin::Disk(PathBuf::from(name))
    }
}

/// Parses `root` and every module reachable through `use`, each once.
fn load(
    sources: &mut SourceMap,
    root: FileId,
    extra: &[&str],
    files: &dyn ModuleFiles,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Loaded> {
    let mut loaded: Vec<Loaded> = Vec::new();
    let mut seen: HashMap<String, FileId> = HashMap::new();
    // The root is known by the same key as a module, so a module that uses it back finds it.
    let root_name = sources.get(root).name.clone();
    match origin_of(&root_name) {
        Origin::Disk(path) => {
            seen.insert(files.key(&path), root);
        }
        Origin::Stdlib => {
            seen.insert(root_name, root);
        }
        Origin::Memory => {}
    }
    // Every `use` between loaded files, for the cycle check.
    let mut uses_of: HashMap<FileId, Vec<(FileId, Option<Span>)>> = HashMap::new();
    let mut queue = vec![root];
    let mut first = true;
    while let Some(file) = queue.pop() {
        let text = sources.get(file).text.clone();
        let (module, parse_diags) = syntax::parse(file, &text);
        diags.extend(parse_diags);
        let origin = origin_of(&sources.get(file).name);
        let mut uses: Vec<(String, Option<Span>)> = Vec::new();
        for item in &module.items {
            if let ast::Item::Use(u) = item {
                uses.push((u.dotted(), Some(u.span)));
            }
        }
        if first {
            uses.extend(extra.iter().map(|e| (e.to_string(), None)));
            first = false;
        }
        for (dotted, span) in uses {
            if dotted == "prelude" {
                continue;
            }
            let found = resolve_module(sources, &origin, &dotted, files, &mut seen);
            if let Some((id, _)) = found {
                uses_of.entry(file).or_default().push((id, span));
            }
            match found {
                Some((id, true)) => queue.push(id),
                Some((_, false)) => {}
                None => {
                    let mut d =
                        Diagnostic::new(Code::UnknownModule, format!("no module `{dotted}`"));
                    if let Some(span) = span {
                        d = d.primary(span, "not found next to this file or in the stdlib");
                    }
                    let names: Vec<String> = crate::stdlib::module_names().collect();
                    diags.push(did_you_mean(d, &dotted, names.iter().map(String::as_str)));
                }
            }
        }
        loaded.push(Loaded { file, module });
    }
    loaded.sort_by_key(|l| l.file);
    report_use_cycles(sources, &loaded, &uses_of, diags);
    loaded
}

/// Reports every cycle of `use`s (a file that uses itself, directly or through other files)
/// once, naming the files on it, at the `use` that closes it. Iterative DFS with colours, in
/// file order, so the report is deterministic.
fn report_use_cycles(
    sources: &SourceMap,
    loaded: &[Loaded],
    uses_of: &HashMap<FileId, Vec<(FileId, Option<Span>)>>,
    diags: &mut Vec<Diagnostic>,
) {
    let mut colour: HashMap<FileId, u8> = HashMap::new();
    let mut reported: std::collections::HashSet<FileId> = Default::default();
    let none = Vec::new();
    for start in loaded.iter().map(|l| l.file) {
        if colour.contains_key(&start) {
            continue;
        }
        let mut stack: Vec<(FileId, usize)> = vec![(start, 0)];
        colour.insert(start, 1);
        while let Some(&mut (v, ref mut next)) = stack.last_mut() {
            let out = uses_of.get(&v).unwrap_or(&none);
            if *next >= out.len() {
                colour.insert(v, 2);
                stack.pop();
                continue;
            }
            let (w, span) = out[*next];
            *next += 1;
            match colour.get(&w) {
                None => {
                    colour.insert(w, 1);
                    stack.push((w, 0));
                }
                Some(1) => {
                    let pos = stack.iter().position(|(x, _)| *x == w).unwrap_or(0);
                    let members: Vec<FileId> = stack[pos..].iter().map(|(x, _)| *x).collect();
                    if members.iter().any(|m| reported.contains(m)) {
                        continue;
                    }
                    reported.extend(members.iter().copied());
                    let mut names: Vec<&str> = members
                        .iter()
                        .map(|m| sources.get(*m).name.as_str())
                        .collect();
                    names.push(sources.get(w).name.as_str());
                    let mut d = Diagnostic::new(
                        Code::UnknownModule,
                        format!("`use` cycle: {}", names.join(" uses ")),
                    )
                    .help(
                        "modules form a tree: move what the files share into a third module \
                         that both use",
                    );
                    if let Some(span) = span {
                        d = d.primary(span, format!("this closes the cycle back to {}", names[0]));
                    }
                    diags.push(d);
                }
                Some(_) => {}
            }
        }
    }
}

/// Finds module `dotted` for a file of `origin`: next to the file on disk, then in the stdlib.
/// Returns the file and whether it is new.
fn resolve_module(
    sources: &mut SourceMap,
    origin: &Origin,
    dotted: &str,
    files: &dyn ModuleFiles,
    seen: &mut HashMap<String, FileId>,
) -> Option<(FileId, bool)> {
    let rel = format!("{}.diag", dotted.replace('.', "/"));
    if let Origin::Disk(path) = origin {
        let dir = path.parent().unwrap_or(Path::new("."));
        let candidate = dir.join(&rel);
        if let Some((key, text)) = files.read(&candidate) {
            if let Some(id) = seen.get(&key) {
                return Some((*id, false));
            }
            let id = sources.add(candidate.to_string_lossy().to_string(), text);
            seen.insert(key, id);
            return Some((id, true));
        }
    }
    let (path, text) = crate::stdlib::module(dotted)?;
    let key = format!("<stdlib>/{path}");
    if let Some(id) = seen.get(&key) {
        return Some((*id, false));
    }
    let id = sources.add(key.clone(), text);
    seen.insert(key, id);
    Some((id, true))
}

/// A diagram's checked signature.
pub(crate) struct Sig<'m> {
    pub name: String,
    pub def: &'m ast::DiagramDef,
    pub hypers: Vec<HyperSig>,
    pub params: Vec<(String, Option<WireType>, Span)>,
    pub outputs: Vec<(Option<WireType>, Span)>,
    /// For a side of a rewrite rule: the rule's index in `Ctx::rules` and whether this is the
    /// right-hand side. Rule sides are not callable.
    pub rule: Option<(usize, bool)>,
}

pub(crate) struct HyperSig {
    pub name: String,
    pub ty: Option<HyperType>,
    pub default: Option<HyperArg>,
    pub span: Span,
    /// Spans of the signature's types, for diagram-valued hyperparameters.
    pub sig_span: Span,
}

pub(crate) struct Ctx<'m> {
    pub diags: Vec<Diagnostic>,
    pub axes: AxisTable,
    pub sigs: Vec<Sig<'m>>,
    pub sig_by_name: HashMap<String, usize>,
    /// Axes declared with conflicting sizes (E0104, reported once): size checks involving them
    /// are skipped, so the conflict is not echoed by every reshape that uses the axis.
    pub poisoned_axes: std::collections::HashSet<AxisId>,
    /// The rules whose class is known, with their left-hand side's definition (name, span).
    pub rules: Vec<(&'m ast::DiagramDef, crate::ir::RuleClass)>,
}

impl<'m> Ctx<'m> {
    pub fn error(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    /// Whether "did you mean" should still be computed (it scans candidates; on hostile input
    /// with thousands of errors that would be quadratic).
    pub fn suggest(&self) -> bool {
        self.diags.len() < 64
    }

    fn collect_axes(&mut self, modules: &[&'m ast::Module]) {
        // Every declaration, by name, in file order.
        let mut decls: Vec<&ast::AxisDecl> = Vec::new();
        for m in modules {
            for item in &m.items {
                if let ast::Item::Axis(ds) = item {
                    decls.extend(ds.iter());
                }
            }
        }
        let mut by_name: HashMap<&str, Vec<&ast::AxisDecl>> = HashMap::new();
        let mut order: Vec<&str> = Vec::new();
        for d in &decls {
            let e = by_name.entry(d.name.text.as_str()).or_default();
            if e.is_empty() {
                order.push(d.name.text.as_str());
            }
            e.push(d);
        }
        // The defining declaration of each axis: the first with a size, else the first.
        let defining: HashMap<&str, &ast::AxisDecl> = order
            .iter()
            .map(|n| {
                let ds = &by_name[n];
                (
                    *n,
                    ds.iter()
                        .find(|d| d.size.is_some())
                        .copied()
                        .unwrap_or(ds[0]),
                )
            })
            .collect();
        // Sizes refer to other axes: resolve in dependency order (Kahn's algorithm, linear in the
        // number of declarations); what is never ready is part of a cycle.
        let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut waiting: HashMap<&str, usize> = HashMap::new();
        let mut dependants: HashMap<&str, Vec<&str>> = HashMap::new();
        for n in &order {
            let mut refs = Vec::new();
            if let Some(s) = &defining[n].size {
                size_refs(s, &mut refs);
            }
            refs.retain(|r| defining.contains_key(r));
            refs.sort_unstable();
            refs.dedup();
            waiting.insert(n, refs.len());
            for r in &refs {
                dependants.entry(r).or_default().push(n);
            }
            deps.insert(n, refs);
        }
        let mut ready: Vec<&str> = order
            .iter()
            .copied()
            .filter(|n| waiting[n] == 0)
            .rev()
            .collect();
        let mut done: HashMap<&str, Size> = HashMap::new();
        while let Some(n) = ready.pop() {
            let size = match &defining[n].size {
                None => Size::var(n),
                Some(s) => self.eval_size(s, &done),
            };
            done.insert(n, size);
            for m in dependants.get(n).map(Vec::as_slice).unwrap_or(&[]) {
                let w = waiting.get_mut(m).expect("every axis has a count");
                *w -= 1;
                if *w == 0 {
                    ready.push(m);
                }
            }
        }
        for n in &order {
            if done.contains_key(n) {
                continue;
            }
            let d = defining[n];
            self.error(
                Diagnostic::new(
                    Code::BadAxisSize,
                    format!("the size of axis `{n}` is defined in terms of itself"),
                )
                .primary(
                    d.span,
                    "this definition depends on itself through other axes",
                )
                .help("give one of the axes in the cycle its own size"),
            );
            done.insert(n, Size::var(n));
        }
        for n in &order {
            let d = defining[n];
            let size = done[n].clone();
            if size.overflowed() {
                self.error(
                    Diagnostic::new(
                        Code::BadAxisSize,
                        format!("the size of axis `{n}` is too large"),
                    )
                    .primary(d.span, "this size does not fit in 64 bits")
                    .help("sizes are products of axis sizes and numbers; check the definition"),
                );
            } else if size.is_concrete() && size.as_constant().is_none_or(|c| c == 0) {
                self.error(
                    Diagnostic::new(
                        Code::BadAxisSize,
                        format!("axis `{n}` has size {size}, not a positive whole number"),
                    )
                    .primary(d.span, format!("this gives `{n}` the size {size}"))
                    .help("sizes are positive whole numbers: check the divisions"),
                );
            }
            // Conflicting declarations: two that both give a size, and disagree.
            let ds = &by_name[n];
            let mut conflicted = false;
            for other in ds
                .iter()
                .filter(|o| o.size.is_some() && !std::ptr::eq(**o, d))
            {
                let other_size = self.eval_size(other.size.as_ref().expect("filtered"), &done);
                if other_size != size {
                    // The label the user can act on first: the declaration in the earliest file
                    // (the root file comes first; stdlib files after it).
                    let (first, second) = if other.span.file < d.span.file {
                        (other.span, d.span)
                    } else {
                        (d.span, other.span)
                    };
                    conflicted = true;
                    self.error(
                        Diagnostic::new(Code::Duplicate, format!("axis `{n}` is declared with two different sizes"))
                            .primary(first, "declared here with one size")
                            .secondary(second, "and here with another")
                            .help("axes are global by name: give every declaration the same size, or declare it without one"),
                    );
                }
            }
            let id = self.axes.insert(AxisInfo {
                name: n.to_string(),
                size,
                span: Some(d.name.span),
            });
            if conflicted {
                self.poisoned_axes.insert(id);
            }
        }
    }

    /// Evaluates a size expression; unknown axes are reported (E0103).
    fn eval_size(&mut self, s: &ast::SizeExpr, done: &HashMap<&str, Size>) -> Size {
        let mut acc = self.size_atom(&s.first, done);
        for (op, atom) in &s.rest {
            let v = self.size_atom(atom, done);
            acc = match op {
                ast::MulOp::Mul => acc.mul(&v),
                ast::MulOp::Div => acc.div(&v),
            };
        }
        acc
    }

    fn size_atom(&mut self, a: &ast::SizeAtom, done: &HashMap<&str, Size>) -> Size {
        match a {
            ast::SizeAtom::Num(n, span) => {
                if *n == 0 || *n == u64::MAX {
                    self.error(
                        Diagnostic::new(Code::BadAxisSize, "sizes are positive whole numbers")
                            .primary(*span, "not a usable size"),
                    );
                    return Size::constant(1);
                }
                Size::constant(*n)
            }
            ast::SizeAtom::Paren(e) => self.eval_size(e, done),
            ast::SizeAtom::Axis(name) => {
                if let Some(s) = done.get(name.text.as_str()) {
                    return s.clone();
                }
                if let Some(id) = self.axes.lookup(&name.text) {
                    return self.axes.size(id).clone();
                }
                let d = Diagnostic::new(Code::UnknownAxis, format!("no axis `{}`", name.text))
                    .primary(name.span, "not declared");
                let d = did_you_mean(d, &name.text, done.keys().copied());
                self.error(d.help_if_none(format!("declare it: `axis {}`", name.text)));
                Size::var(&name.text)
            }
        }
    }

    /// Resolves a written type. Unknown axes (E0103) and repeated axes (E0206) are reported.
    pub fn resolve_type(&mut self, t: &ast::TypeExpr) -> Option<WireType> {
        let mut axes: Vec<AxisId> = Vec::new();
        let mut ok = true;
        for n in &t.axes {
            match self.axis(n) {
                Some(a) if axes.contains(&a) => {
                    self.error(
                        Diagnostic::new(Code::AxisPresent, format!("axis `{}` appears twice in this type", n.text))
                            .primary(n.span, "repeated here")
                            .help("a wire has each axis at most once; rename one copy (`src` for the key side)"),
                    );
                    ok = false;
                }
                Some(a) => axes.push(a),
                None => ok = false,
            }
        }
        let index_of = match &t.of {
            None => None,
            Some(v) => match self.axis(v) {
                Some(a) => Some(a),
                None => {
                    ok = false;
                    None
                }
            },
        };
        ok.then_some(WireType { axes, index_of })
    }

    /// Looks up an axis by name, reporting E0103 with a suggestion.
    pub fn axis(&mut self, n: &ast::Name) -> Option<AxisId> {
        if let Some(a) = self.axes.lookup(&n.text) {
            return Some(a);
        }
        let d = Diagnostic::new(Code::UnknownAxis, format!("no axis `{}`", n.text))
            .primary(n.span, "not declared");
        let d = if self.suggest() {
            did_you_mean(d, &n.text, self.axes.names())
        } else {
            d
        };
        let d = d.help_if_none(format!(
            "declare it at the top of the file: `axis {}`",
            n.text
        ));
        self.error(d);
        None
    }

    fn collect_signatures(&mut self, modules: &[&'m ast::Module]) {
        let mut rule_names: HashMap<&str, Span> = HashMap::new();
        for m in modules {
            for item in &m.items {
                if let ast::Item::Rule(rule) = item {
                    self.collect_rule(rule, &mut rule_names);
                    continue;
                }
                let ast::Item::Diagram(def) = item else {
                    continue;
                };
                let name = def.name.text.clone();
                if prims::is_primitive(&name) {
                    self.error(
                        Diagnostic::new(Code::Duplicate, format!("`{name}` is a primitive box"))
                            .primary(def.name.span, "this diagram would hide the primitive")
                            .help("choose another name"),
                    );
                    continue;
                }
                if let Some(&prev) = self.sig_by_name.get(&name) {
                    let prev_span = self.sigs[prev].def.name.span;
                    self.error(
                        Diagnostic::new(
                            Code::Duplicate,
                            format!("diagram `{name}` is defined twice"),
                        )
                        .primary(def.name.span, "defined again here")
                        .secondary(prev_span, "first defined here")
                        .help("diagrams of all used modules share one namespace: rename one"),
                    );
                    continue;
                }
                let sig = self.signature(def);
                self.sig_by_name.insert(name, self.sigs.len());
                self.sigs.push(sig);
            }
        }
        // Defaults of diagram-valued hyperparameters name diagrams: check them now that all
        // signatures are known.
        for i in 0..self.sigs.len() {
            for h in 0..self.sigs[i].hypers.len() {
                let decl = &self.sigs[i].def.hypers[h];
                if let (Some(HyperType::Diagram { .. }), Some(ast::Value::Name(n))) =
                    (&self.sigs[i].hypers[h].ty, &decl.default)
                {
                    let expected = self.sigs[i].hypers[h].ty.clone().unwrap();
                    if self
                        .check_diagram_value(n, &expected, decl.span, &[])
                        .is_none()
                    {
                        self.sigs[i].hypers[h].default = None;
                    }
                }
            }
        }
    }

    /// Registers both sides of a rule (not callable, so not in `sig_by_name`).
    fn collect_rule(&mut self, rule: &'m ast::RuleDef, names: &mut HashMap<&'m str, Span>) {
        let name = &rule.lhs.name;
        if let Some(prev) = names.insert(&name.text, name.span) {
            self.error(
                Diagnostic::new(
                    Code::Duplicate,
                    format!("rule `{}` is defined twice", name.text),
                )
                .primary(name.span, "defined again here")
                .secondary(prev, "first defined here")
                .help("rules of all used modules share one namespace: rename one"),
            );
            return;
        }
        let class = crate::ir::RuleClass::ALL
            .iter()
            .find(|(n, _)| *n == rule.class.text)
            .map(|(_, c)| *c);
        let Some(class) = class else {
            let d = Diagnostic::new(
                Code::UnknownRuleClass,
                format!("`{}` is not a class of rewrite rule", rule.class.text),
            )
            .primary(
                rule.class.span,
                "expected `equal`, `expressive` or `specialise`",
            );
            let names = crate::ir::RuleClass::ALL.iter().map(|(n, _)| *n);
            self.error(did_you_mean(d, &rule.class.text, names));
            return;
        };
        let index = self.rules.len();
        self.rules.push((&rule.lhs, class));
        for (side, rhs) in [(&rule.lhs, false), (&rule.rhs, true)] {
            let mut sig = self.signature(side);
            sig.rule = Some((index, rhs));
            self.sigs.push(sig);
        }
    }

    fn signature(&mut self, def: &'m ast::DiagramDef) -> Sig<'m> {
        let mut hypers = Vec::new();
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for h in &def.hypers {
            if let Some(prev) = seen.insert(&h.name.text, h.name.span) {
                self.error(
                    Diagnostic::new(
                        Code::Duplicate,
                        format!("hyperparameter `{}` is declared twice", h.name.text),
                    )
                    .primary(h.name.span, "declared again here")
                    .secondary(prev, "first declared here"),
                );
            }
            let (ty, sig_span) = match &h.kind {
                ast::HyperKind::Int(s) => (Some(HyperType::Int), *s),
                ast::HyperKind::Float(s) => (Some(HyperType::Float), *s),
                ast::HyperKind::Diagram(sig) => {
                    let ins: Vec<Option<WireType>> =
                        sig.inputs.iter().map(|t| self.resolve_type(t)).collect();
                    let outs: Vec<Option<WireType>> =
                        sig.outputs.iter().map(|t| self.resolve_type(t)).collect();
                    let ty = (ins.iter().all(Option::is_some) && outs.iter().all(Option::is_some))
                        .then(|| HyperType::Diagram {
                            inputs: ins.into_iter().flatten().collect(),
                            outputs: outs.into_iter().flatten().collect(),
                        });
                    (ty, sig.span)
                }
            };
            let default = match (&ty, &h.default) {
                (_, None) | (None, _) => None,
                (Some(HyperType::Diagram { .. }), Some(ast::Value::Name(n))) => {
                    // Checked against the named diagram's signature once all are known.
                    Some(HyperArg::Diagram(Callee::Diagram(n.text.clone())))
                }
                (Some(t), Some(v)) => self.literal_hyper(v, t),
            };
            hypers.push(HyperSig {
                name: h.name.text.clone(),
                ty,
                default,
                span: h.name.span,
                sig_span,
            });
        }
        let mut params = Vec::new();
        for p in &def.params {
            if let Some(prev) = seen.insert(&p.name.text, p.name.span) {
                self.error(
                    Diagnostic::new(
                        Code::Duplicate,
                        format!("`{}` is declared twice", p.name.text),
                    )
                    .primary(p.name.span, "declared again here")
                    .secondary(prev, "first declared here"),
                );
            }
            let ty = self.resolve_type(&p.ty);
            params.push((p.name.text.clone(), ty, p.ty.span));
        }
        if def.outputs.is_empty() {
            self.error(
                Diagnostic::new(
                    Code::Arity,
                    format!("diagram `{}` has no outputs", def.name.text),
                )
                .primary(def.name.span, "declared with `-> ()`")
                .help("a diagram outputs at least one wire; drop unwanted inputs with `discard`"),
            );
        }
        let outputs = def
            .outputs
            .iter()
            .map(|t| (self.resolve_type(t), t.span))
            .collect();
        Sig {
            rule: None,
            name: def.name.text.clone(),
            def,
            hypers,
            params,
            outputs,
        }
    }

    /// A literal default for an int or float hyperparameter.
    fn literal_hyper(&mut self, v: &ast::Value, t: &HyperType) -> Option<HyperArg> {
        match (v, t) {
            (ast::Value::Num(x, _), HyperType::Int) if x.fract() == 0.0 && *x >= 0.0 => {
                Some(HyperArg::Num(crate::ir::Const::Num(*x)))
            }
            (ast::Value::Num(x, _), HyperType::Float) => {
                Some(HyperArg::Num(crate::ir::Const::Num(*x)))
            }
            _ => {
                let want = crate::ir::print::hyper_type(t, &self.axes);
                self.error(
                    Diagnostic::new(
                        Code::HyperMismatch,
                        format!("this default is not a valid `{want}`"),
                    )
                    .primary(
                        v.span(),
                        format!(
                            "expected {}",
                            if *t == HyperType::Int {
                                "a whole number"
                            } else {
                                "a number"
                            }
                        ),
                    ),
                );
                None
            }
        }
    }

    /// Checks that `n` names a diagram (or a diagram-valued hyperparameter among `hypers`) with
    /// the boundary `expected` requires; reports E0101/E0102/E0501 otherwise.
    pub fn check_diagram_value(
        &mut self,
        n: &ast::Name,
        expected: &HyperType,
        expected_span: Span,
        hypers: &[HyperSig],
    ) -> Option<Callee> {
        let HyperType::Diagram { inputs, outputs } = expected else {
            return None;
        };
        let (callee, got_in, got_out): (Callee, Vec<Option<WireType>>, Vec<Option<WireType>>) =
            if let Some(h) = hypers.iter().find(|h| h.name == n.text) {
                match &h.ty {
                    Some(HyperType::Diagram { inputs, outputs }) => (
                        Callee::Hyper(n.text.clone()),
                        inputs.iter().cloned().map(Some).collect(),
                        outputs.iter().cloned().map(Some).collect(),
                    ),
                    Some(_) => {
                        self.error(
                            Diagnostic::new(
                                Code::HyperMismatch,
                                format!("`{}` is a number, not a diagram", n.text),
                            )
                            .primary(n.span, "a number hyperparameter")
                            .secondary(expected_span, "a diagram is expected here"),
                        );
                        return None;
                    }
                    None => return None,
                }
            } else if let Some(&i) = self.sig_by_name.get(&n.text) {
                let s = &self.sigs[i];
                (
                    Callee::Diagram(n.text.clone()),
                    s.params.iter().map(|p| p.1.clone()).collect(),
                    s.outputs.iter().map(|o| o.0.clone()).collect(),
                )
            } else {
                let d = Diagnostic::new(Code::UnknownBox, format!("no diagram `{}`", n.text))
                    .primary(n.span, "not defined");
                let names: Vec<String> = self.sig_by_name.keys().cloned().collect();
                let d = did_you_mean(d, &n.text, names.iter().map(String::as_str));
                self.error(d.help_if_none("`use` the module that defines it"));
                return None;
            };
        if got_in.iter().chain(&got_out).any(Option::is_none) {
            return None; // already reported where its types are written
        }
        let got_in: Vec<WireType> = got_in.into_iter().flatten().collect();
        let got_out: Vec<WireType> = got_out.into_iter().flatten().collect();
        if &got_in != inputs || &got_out != outputs {
            let show = |i: &[WireType], o: &[WireType], axes: &AxisTable| {
                crate::ir::print::hyper_type(
                    &HyperType::Diagram {
                        inputs: i.to_vec(),
                        outputs: o.to_vec(),
                    },
                    axes,
                )
            };
            let got = show(&got_in, &got_out, &self.axes);
            let want = show(inputs, outputs, &self.axes);
            self.error(
                Diagnostic::new(
                    Code::HyperMismatch,
                    format!(
                        "`{}` has the boundary {got}, but {want} is required",
                        n.text
                    ),
                )
                .primary(n.span, format!("this is {got}"))
                .secondary(expected_span, format!("requires {want}")),
            );
            return None;
        }
        Some(callee)
    }

    /// Reports calls that recurse (directly or through other diagrams): a diagram must be a
    /// finite graph.
    fn check_recursion(&mut self, program: &Program) {
        let index: HashMap<&str, usize> = program
            .diagrams
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.as_str(), i))
            .collect();
        // Edges with the span that closes them: a call's span, or the default of a
        // diagram-valued hyperparameter that a call (or a diagram passed on to a call) uses.
        // A diagram passed as a hyperparameter is an edge too: the callee may call it.
        let edges: Vec<Vec<(usize, Span, Option<Span>)>> = program
            .diagrams
            .iter()
            .map(|d| {
                let sig = self
                    .sig_by_name
                    .get(d.name.as_str())
                    .map(|&i| &self.sigs[i]);
                // The diagram a hyperparameter of `d` names by default, with the default's span.
                let default_of = |h: &str, at: Span| -> Option<(usize, Span, Option<Span>)> {
                    let sig = sig?;
                    let k = sig.hypers.iter().position(|x| x.name == h)?;
                    let Some(HyperArg::Diagram(Callee::Diagram(n))) = &sig.hypers[k].default else {
                        return None;
                    };
                    let span = sig.def.hypers.get(k)?.default.as_ref()?.span();
                    index.get(n.as_str()).map(|&j| (j, span, Some(at)))
                };
                let target = |c: &Callee, at: Span| match c {
                    Callee::Diagram(n) => index.get(n.as_str()).map(|&j| (j, at, None)),
                    Callee::Hyper(h) => default_of(h, at),
                };
                let mut out = Vec::new();
                for b in &d.boxes {
                    if let Op::Call { callee, hypers } = &b.op {
                        out.extend(target(callee, b.span));
                        for (_, a) in hypers {
                            if let HyperArg::Diagram(c) = a {
                                out.extend(target(c, b.span));
                            }
                        }
                    }
                }
                out
            })
            .collect();
        // Iterative DFS with colours; a grey target closes a cycle.
        let n = edges.len();
        let mut colour = vec![0u8; n];
        let mut reported = vec![false; n];
        for start in 0..n {
            if colour[start] != 0 {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            colour[start] = 1;
            while let Some(&mut (v, ref mut next)) = stack.last_mut() {
                if *next < edges[v].len() {
                    let (w, span, via_default) = edges[v][*next];
                    *next += 1;
                    if colour[w] == 1 {
                        // The cycle is the stack from w to v.
                        let pos = stack.iter().position(|(x, _)| *x == w).unwrap_or(0);
                        let members: Vec<usize> = stack[pos..].iter().map(|(x, _)| *x).collect();
                        if !members.iter().any(|m| reported[*m]) {
                            let names: Vec<&str> = members
                                .iter()
                                .map(|m| program.diagrams[*m].name.as_str())
                                .collect();
                            let mut d = Diagnostic::new(
                                Code::Recursive,
                                format!(
                                    "diagram `{}` calls itself{}",
                                    program.diagrams[w].name,
                                    if names.len() > 1 {
                                        format!(" through {}", names.join(" -> "))
                                    } else {
                                        String::new()
                                    }
                                ),
                            )
                            .primary(
                                span,
                                if via_default.is_some() {
                                    "this default closes the loop"
                                } else {
                                    "this call closes the loop"
                                },
                            )
                            .help("a diagram is a finite graph; use `repeat` to stack layers");
                            if let Some(call) = via_default {
                                d = d.secondary(call, "the default is used here");
                            }
                            for m in &members {
                                reported[*m] = true;
                                if *m != v {
                                    d = d.secondary(
                                        program.diagrams[*m].span,
                                        format!(
                                            "`{}` is part of the loop",
                                            program.diagrams[*m].name
                                        ),
                                    );
                                }
                            }
                            self.error(d);
                        }
                    } else if colour[w] == 0 {
                        colour[w] = 1;
                        stack.push((w, 0));
                    }
                } else {
                    colour[v] = 2;
                    stack.pop();
                }
            }
        }
    }
}

fn size_refs<'a>(s: &'a ast::SizeExpr, out: &mut Vec<&'a str>) {
    let atom = |a: &'a ast::SizeAtom, out: &mut Vec<&'a str>| match a {
        ast::SizeAtom::Num(..) => {}
        ast::SizeAtom::Axis(n) => out.push(&n.text),
        ast::SizeAtom::Paren(e) => size_refs(e, out),
    };
    atom(&s.first, out);
    for (_, a) in &s.rest {
        atom(a, out);
    }
}

trait HelpIfNone {
    fn help_if_none(self, help: impl Into<String>) -> Self;
}

impl HelpIfNone for Diagnostic {
    fn help_if_none(self, help: impl Into<String>) -> Diagnostic {
        if self.help.is_none() {
            self.help(help)
        } else {
            self
        }
    }
}
