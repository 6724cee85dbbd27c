//! The rewrite commands (`diagc rewrite`, `derive`, `enumerate`, `taxonomy`): argument
//! handling, printing and exit codes over `crate::rewrite`.

use super::fail;
use crate::error::Error;
use crate::rewrite::input::{draw_step, load_rules, load_term, parse_apply};
use crate::rewrite::rule::{self, RuleBook};
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

pub fn rewrite(a: RewriteArgs) -> i32 {
    let book = match load_rules(&a.rules) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    if a.list {
        for r in &book.rules {
            outln!("{:<28} {:<11} {}", r.name, r.class.name(), r.origin);
        }
        return 0;
    }
    let Some(file) = a.file else {
        return fail(Error::Usage("rewrite needs a FILE".into()));
    };
    let mut term = match load_term(&file, a.diagram.as_deref()) {
        Ok(t) => t,
        Err(e) => return fail(e),
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
            outln!("{:<28} {:<11} {}", r.name, r.class.name(), at.join(" "));
        }
        return 0;
    }
    if let Some(dir) = &a.draw
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        return fail(Error::create(dir, e));
    }
    if a.trace {
        outln!("// {}: the diagram as rewriting sees it", term.name);
        out!("{}", term.to_text());
    }
    for (i, spec) in a.apply.iter().enumerate() {
        let (name, site) = parse_apply(spec);
        let step = match rule::apply(&book, &term, &name, site.as_ref()) {
            Ok(s) => s,
            Err(e) => return fail(e.context(&format!("step {}: ", i + 1))),
        };
        if a.trace {
            outln!(
                "\n// step {}: {} ({}) at site {}",
                i + 1,
                step.rule,
                step.class.name(),
                step.site
            );
            out!("{}", step.after.to_text());
        }
        if let Some(dir) = &a.draw {
            let path = dir.join(format!("step{}.svg", i + 1));
            match draw_step(&step) {
                Ok(svg) => {
                    if let Err(e) = std::fs::write(&path, svg) {
                        return fail(Error::write(path, e));
                    }
                }
                Err(e) => errln!("diagc: step {} not drawn: {e}", i + 1),
            }
        }
        term = step.after;
    }
    if !a.trace {
        out!("{}", term.to_text());
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
    use crate::rewrite::derive as d;
    if list {
        for (name, text) in d::STDLIB {
            let title = text
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches('#')
                .trim();
            outln!("{name:<28} {title}");
        }
        return 0;
    }
    let Some(which) = derivation else {
        return fail(Error::Usage("derive needs a DERIVATION".into()));
    };
    let text = match d::STDLIB.iter().find(|(n, _)| *n == which) {
        Some((_, t)) => t.to_string(),
        None => match crate::session::read_text(Path::new(&which)) {
            Ok(t) => t,
            Err(e) => {
                let names: Vec<&str> = d::STDLIB.iter().map(|(n, _)| *n).collect();
                return fail(e.context(&format!(
                    "`{which}` is neither a stdlib derivation ({}) nor a readable file: ",
                    names.join(", ")
                )));
            }
        },
    };
    let der = match d::parse(&text) {
        Ok(x) => x,
        Err(e) => return fail(e.context(&format!("{which}: "))),
    };
    let book = match load_rules(rules) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    if let Some(dir) = &draw
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        return fail(Error::create(dir, e));
    }
    let mut failed_draw = false;
    let result = d::replay(&der, &book, &mut |i, c| {
        let numeric = match &c.numeric {
            Some(crate::rewrite::verify::Agreement::Agree(e)) => {
                format!(", numerically equal (worst {e:.1e})")
            }
            Some(crate::rewrite::verify::Agreement::Incomparable(why)) => {
                format!(", equal as function classes ({why})")
            }
            None => String::new(),
        };
        outln!(
            "step {i}: {} ({}) at site {}: types hold{numeric}",
            c.step.rule,
            c.step.class.name(),
            c.step.site
        );
        if trace {
            out!("{}", c.step.after.to_text());
        }
        if let Some(dir) = &draw {
            match draw_step(&c.step).and_then(|svg| {
                let path = dir.join(format!("step{i}.svg"));
                std::fs::write(&path, svg).map_err(|e| Error::write(path, e))
            }) {
                Ok(()) => {}
                Err(e) => {
                    errln!("diagc: step {i} not drawn: {e}");
                    failed_draw = true;
                }
            }
        }
    });
    match result {
        Ok(t) => {
            match &der.end {
                Some((end, _)) => outln!("end: the result is `{end}` up to wire names"),
                None => out!("{}", t.to_text()),
            }
            if failed_draw { 2 } else { 0 }
        }
        Err(e) => fail(e.context(&format!("{which}: "))),
    }
}

pub fn enumerate(dir: Option<&Path>, check: bool, spec_file: Option<&Path>) -> i32 {
    use crate::rewrite::enumerate::{self as en, Spec};
    let dir = match (dir, spec_file) {
        (Some(d), _) => d,
        (None, None) => Path::new("stdlib/anatomy"),
        (None, Some(_)) => {
            return fail(Error::Usage(
                "`--spec` needs `--output DIR`: the enumeration of a user's generators does \
                 not go into stdlib/anatomy"
                    .into(),
            ));
        }
    };
    let spec = match spec_file {
        None => Spec::stdlib(),
        Some(f) => match Spec::load(f) {
            Ok(s) => s,
            Err(e) => return fail(e),
        },
    };
    let book = match RuleBook::stdlib() {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let ms = match en::enumerate_spec(&book, &spec) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    if !check && let Err(e) = std::fs::create_dir_all(dir) {
        return fail(Error::create(dir, e));
    }
    let mut stale = false;
    for m in &ms {
        let path = dir.join(format!("{}.diag", m.name));
        let text = match &spec.source {
            None => en::file_text(m),
            Some(src) => en::spec_file_text(m, src),
        };
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                errln!("diagc: {} differs from a fresh enumeration", path.display());
                stale = true;
            }
        } else if let Err(e) = std::fs::write(&path, &text) {
            return fail(Error::write(path, e));
        }
        outln!(
            "{:<4} {:<14} {:<17} {}",
            m.name,
            m.recipe,
            m.colour,
            path.display()
        );
    }
    outln!("{} mechanisms", ms.len());
    if stale { 1 } else { 0 }
}

/// `diagc taxonomy`.
pub fn taxonomy(format: super::TaxonomyFormat, output: Option<&Path>) -> i32 {
    use super::TaxonomyFormat;
    use crate::rewrite::taxonomy;
    let book = match RuleBook::stdlib() {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let t = match taxonomy::build(&book) {
        Ok(t) => t,
        Err(e) => return fail(e.context("the taxonomy does not hold: ")),
    };
    let bytes: Vec<u8> = match format {
        TaxonomyFormat::Dot => taxonomy::dot(&t).into_bytes(),
        TaxonomyFormat::Json => taxonomy::json(&t).into_bytes(),
        TaxonomyFormat::Svg => taxonomy::svg(&t).into_bytes(),
        TaxonomyFormat::Md => match taxonomy::markdown(&t) {
            Ok(m) => m.into_bytes(),
            Err(e) => return fail(e.context("cannot write the registry page: ")),
        },
        TaxonomyFormat::Png => {
            if output.is_none() {
                return fail(Error::Usage(
                    "`--format png` writes a file: give `--output FILE.png`".into(),
                ));
            }
            match crate::render::png::render(&taxonomy::svg(&t), 2.0) {
                Ok(b) => b,
                Err(e) => return fail(Error::from(e).context("cannot rasterise the taxonomy: ")),
            }
        }
    };
    match output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &bytes) {
                return fail(Error::write(path, e));
            }
            errln!(
                "wrote {} ({} diagrams, {} derivations)",
                path.display(),
                t.nodes.len(),
                t.edges.len()
            );
        }
        None => {
            super::output::write(0, &bytes);
        }
    }
    if !t.not_reached.is_empty() {
        errln!(
            "note: stdlib mechanisms that no derivation reaches and stdlib/zoo.toml gives no \
             reason for: {}",
            t.not_reached.join(", ")
        );
    }
    0
}
