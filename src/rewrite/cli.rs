//! The rewrite commands (`diagc rewrite`, `diagc derive`): argument handling, printing and exit
//! codes, kept here so `cli` stays a list of commands.

use super::rule::{self, RuleBook, Site, Step};
use super::term::Term;
use crate::driver;
use crate::ir::Program;
use std::path::{Path, PathBuf};

/// The arguments of `diagc rewrite`.
#[derive(clap::Args)]
pub struct RewriteArgs {
    #[arg(required_unless_present = "list")]
    pub file: Option<PathBuf>,
    /// The diagram to rewrite (default: the only diagram, or the last one, of FILE).
    #[arg(long)]
    pub diagram: Option<String>,
    /// RULE or RULE@SITE, applied in order; SITE is a match number (1 = the first match,
    /// the default) or the name of the wire the rule's left side outputs.
    #[arg(long, value_name = "RULE[@SITE]")]
    pub apply: Vec<String>,
    /// Extra .diag files with `rule` declarations.
    #[arg(long, value_name = "FILE")]
    pub rules: Vec<PathBuf>,
    /// Print every intermediate diagram, with the rule and site of each step.
    #[arg(long)]
    pub trace: bool,
    /// Print where each rule applies in the diagram instead of rewriting.
    #[arg(long)]
    pub sites: bool,
    /// List the known rules with their classes.
    #[arg(long)]
    pub list: bool,
    /// Also draw each step (before and after, the site highlighted) as DIR/stepN.svg.
    #[arg(long, value_name = "DIR")]
    pub draw: Option<PathBuf>,
}

/// The stdlib's rules and those of `files`.
pub fn load_rules(files: &[PathBuf]) -> Result<RuleBook, String> {
    let mut book = RuleBook::stdlib()?;
    for f in files {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        book.add_text(&f.display().to_string(), &text)?;
    }
    Ok(book)
}

/// Checks `file` and returns the term of one of its diagrams (the named one, else the only or
/// last one defined in the file itself).
pub fn load_term(file: &Path, diagram: Option<&str>) -> Result<Term, String> {
    let o = driver::check_path(file)?;
    if !o.checked.is_ok() {
        return Err(format!(
            "{}{} does not check",
            o.plain_report(),
            file.display()
        ));
    }
    let p = &o.checked.program;
    term_of(p, diagram, &file.display().to_string())
}

pub fn term_of(p: &Program, diagram: Option<&str>, shown: &str) -> Result<Term, String> {
    let root = crate::source::FileId(0);
    let d = match diagram {
        Some(n) => p.diagram(n).ok_or_else(|| {
            let names: Vec<&str> = p.diagrams.iter().map(|d| d.name.as_str()).collect();
            format!(
                "no diagram `{n}` in {shown}; there are: {}",
                names.join(", ")
            )
        })?,
        None => p
            .diagrams
            .iter()
            .rev()
            .find(|d| d.span.file == root)
            .ok_or_else(|| format!("{shown} defines no diagram"))?,
    };
    Term::from_diagram(d, &p.axes)
}

/// Parses `RULE[@SITE]`.
pub fn parse_apply(s: &str) -> (String, Option<Site>) {
    match s.split_once('@') {
        Some((r, site)) => (r.to_string(), Some(Site::parse(site))),
        None => (s.to_string(), None),
    }
}

/// Draws a step as an SVG: before and after, the rewritten wire highlighted on both sides.
pub fn draw_step(step: &Step) -> Result<String, String> {
    let side =
        |t: &Term| -> Result<(Program, String), String> { Ok((t.recheck()?.1, t.name.clone())) };
    let (pb, nb) = side(&step.before)?;
    let (pa, na) = side(&step.after)?;
    let db = pb.diagram(&nb).ok_or("lost diagram")?;
    let da = pa.diagram(&na).ok_or("lost diagram")?;
    let root = step.matched_name.clone().into_iter().collect::<Vec<_>>();
    let hb = crate::render::Highlight::by_wire_names(db, &root).unwrap_or_default();
    let ha = crate::render::Highlight::by_wire_names(da, &root).unwrap_or_default();
    crate::render::draw_step((&pb, db, &hb), (&pa, da, &ha), &Default::default())
        .map_err(|e| format!("{e:?}"))
}

pub fn rewrite(a: RewriteArgs) -> i32 {
    let book = match load_rules(&a.rules) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("diagc: {e}");
            return 1;
        }
    };
    if a.list {
        for r in &book.rules {
            println!("{:<28} {:<11} {}", r.name, r.class.name(), r.origin);
        }
        return 0;
    }
    let Some(file) = a.file else {
        eprintln!("diagc: rewrite needs a FILE");
        return 2;
    };
    let mut term = match load_term(&file, a.diagram.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("diagc: {e}");
            return 1;
        }
    };
    if a.sites {
        for r in &book.rules {
            let ms = rule::find_matches(r, &term);
            if ms.is_empty() {
                continue;
            }
            let at: Vec<String> = ms
                .iter()
                .enumerate()
                .map(|(i, m)| match &term.nodes[m.root.node].names[m.root.out] {
                    Some(n) => format!("{}:`{n}`", i + 1),
                    None => format!("{}", i + 1),
                })
                .collect();
            println!("{:<28} {:<11} {}", r.name, r.class.name(), at.join(" "));
        }
        return 0;
    }
    if let Some(dir) = &a.draw
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("diagc: cannot create {}: {e}", dir.display());
        return 2;
    }
    if a.trace {
        println!("// {}: the diagram as rewriting sees it", term.name);
        print!("{}", term.to_text());
    }
    for (i, spec) in a.apply.iter().enumerate() {
        let (name, site) = parse_apply(spec);
        let step = match rule::apply(&book, &term, &name, site.as_ref()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("diagc: step {}: {e}", i + 1);
                return 1;
            }
        };
        if a.trace {
            println!(
                "\n// step {}: {} ({}) at site {}",
                i + 1,
                step.rule,
                step.class.name(),
                step.site
            );
            print!("{}", step.after.to_text());
        }
        if let Some(dir) = &a.draw {
            let path = dir.join(format!("step{}.svg", i + 1));
            match draw_step(&step) {
                Ok(svg) => {
                    if let Err(e) = std::fs::write(&path, svg) {
                        eprintln!("diagc: cannot write {}: {e}", path.display());
                        return 2;
                    }
                }
                Err(e) => eprintln!("diagc: step {} not drawn: {e}", i + 1),
            }
        }
        term = step.after;
    }
    if !a.trace {
        print!("{}", term.to_text());
    }
    0
}

pub fn derive(
    derivation: Option<String>,
    rules: &[PathBuf],
    trace: bool,
    list: bool,
    draw: Option<PathBuf>,
) -> i32 {
    use super::derive as d;
    if list {
        for (name, text) in d::STDLIB {
            let title = text
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches('#')
                .trim();
            println!("{name:<28} {title}");
        }
        return 0;
    }
    let Some(which) = derivation else {
        eprintln!("diagc: derive needs a DERIVATION");
        return 2;
    };
    let text = match d::STDLIB.iter().find(|(n, _)| *n == which) {
        Some((_, t)) => t.to_string(),
        None => match std::fs::read_to_string(&which) {
            Ok(t) => t,
            Err(e) => {
                let names: Vec<&str> = d::STDLIB.iter().map(|(n, _)| *n).collect();
                eprintln!(
                    "diagc: `{which}` is neither a stdlib derivation ({}) nor a readable file: {e}",
                    names.join(", ")
                );
                return 2;
            }
        },
    };
    let der = match d::parse(&text) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("diagc: {which}: {e}");
            return 1;
        }
    };
    let book = match load_rules(rules) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("diagc: {e}");
            return 1;
        }
    };
    if let Some(dir) = &draw
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("diagc: cannot create {}: {e}", dir.display());
        return 2;
    }
    let mut failed_draw = false;
    let result = d::replay(&der, &book, &mut |i, c| {
        let numeric = match &c.numeric {
            Some(super::verify::Agreement::Agree(e)) => {
                format!(", numerically equal (worst {e:.1e})")
            }
            Some(super::verify::Agreement::Incomparable(why)) => {
                format!(", equal as function classes ({why})")
            }
            None => String::new(),
        };
        println!(
            "step {i}: {} ({}) at site {}: types hold{numeric}",
            c.step.rule,
            c.step.class.name(),
            c.step.site
        );
        if trace {
            print!("{}", c.step.after.to_text());
        }
        if let Some(dir) = &draw {
            match draw_step(&c.step).and_then(|svg| {
                std::fs::write(dir.join(format!("step{i}.svg")), svg).map_err(|e| e.to_string())
            }) {
                Ok(()) => {}
                Err(e) => {
                    eprintln!("diagc: step {i} not drawn: {e}");
                    failed_draw = true;
                }
            }
        }
    });
    match result {
        Ok(t) => {
            match &der.end {
                Some((end, _)) => println!("end: the result is `{end}` up to wire names"),
                None => print!("{}", t.to_text()),
            }
            if failed_draw { 2 } else { 0 }
        }
        Err(e) => {
            eprintln!("diagc: {which}: {e}");
            1
        }
    }
}

pub fn enumerate(dir: &Path, check: bool) -> i32 {
    let book = match RuleBook::stdlib() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("diagc: {e}");
            return 1;
        }
    };
    let ms = match super::enumerate::enumerate(&book) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("diagc: {e}");
            return 1;
        }
    };
    if !check && let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("diagc: cannot create {}: {e}", dir.display());
        return 2;
    }
    let mut stale = false;
    for m in &ms {
        let path = dir.join(format!("{}.diag", m.name));
        let text = super::enumerate::file_text(m);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                eprintln!("diagc: {} differs from a fresh enumeration", path.display());
                stale = true;
            }
        } else if let Err(e) = std::fs::write(&path, &text) {
            eprintln!("diagc: cannot write {}: {e}", path.display());
            return 2;
        }
        println!(
            "{:<4} {:<14} {:<17} {}",
            m.name,
            m.recipe,
            m.colour,
            path.display()
        );
    }
    println!("{} mechanisms", ms.len());
    if stale { 1 } else { 0 }
}

/// `diagc taxonomy`.
pub fn taxonomy(format: crate::cli::TaxonomyFormat, output: Option<&Path>) -> i32 {
    use super::taxonomy;
    use crate::cli::TaxonomyFormat;
    let book = match RuleBook::stdlib() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("diagc: {e}");
            return 2;
        }
    };
    let t = match taxonomy::build(&book) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("diagc: the taxonomy does not hold: {e}");
            return 1;
        }
    };
    let bytes: Vec<u8> = match format {
        TaxonomyFormat::Dot => taxonomy::dot(&t).into_bytes(),
        TaxonomyFormat::Json => taxonomy::json(&t).into_bytes(),
        TaxonomyFormat::Svg => taxonomy::svg(&t).into_bytes(),
        TaxonomyFormat::Png => {
            if output.is_none() {
                eprintln!("diagc: `--format png` writes a file: give `--output FILE.png`");
                return 2;
            }
            match crate::render::png::render(&taxonomy::svg(&t), 2.0) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("diagc: cannot rasterise the taxonomy: {e}");
                    return 2;
                }
            }
        }
    };
    match output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &bytes) {
                eprintln!("diagc: cannot write {}: {e}", path.display());
                return 2;
            }
            eprintln!(
                "wrote {} ({} diagrams, {} derivations)",
                path.display(),
                t.nodes.len(),
                t.edges.len()
            );
        }
        None => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(&bytes);
        }
    }
    if !t.not_reached.is_empty() {
        eprintln!(
            "note: stdlib mechanisms no derivation reaches yet: {}",
            t.not_reached.join(", ")
        );
    }
    0
}
