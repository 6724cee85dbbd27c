//! `diagc compile` (IR, instances, the optimiser, CUDA) and `diagc draw`.

use super::*;

pub(super) fn compile(
    file: &Path,
    diagram: Option<&str>,
    emit: Emit,
    output: Option<&Path>,
    instance: &InstanceArgs,
    format: Format,
    color: ColorChoice,
) -> i32 {
    // A diagram-valued hyperparameter may name a stdlib mechanism the file does not `use`.
    let extra: Vec<String> = instance.mechanism_modules();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let o = match session::check_path_with(file, &extra) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    if print_diagnostics(&o, format, color) {
        return 1;
    }
    let program = &o.checked.program;
    let root = crate::source::FileId(0);
    let selected: Vec<&crate::ir::Diagram> = match diagram {
        Some(name) => match program.diagram(name) {
            Some(d) => vec![d],
            None => {
                let names: Vec<&str> = program.diagrams.iter().map(|d| d.name.as_str()).collect();
                return fail(Error::Usage(format!(
                    "no diagram `{name}` in {}; there are: {}",
                    file.display(),
                    names.join(", ")
                )));
            }
        },
        None => program
            .diagrams
            .iter()
            .filter(|d| d.span.file == root)
            .collect(),
    };
    let instantiate = |name: &str| {
        instance
            .bindings()
            .and_then(|b| crate::ir::instance::instantiate(program, name, &b))
    };
    let mut text = String::new();
    let mut book = None;
    for (i, d) in selected.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        match emit {
            Emit::Ir => text.push_str(&print::diagram(d, &program.axes)),
            Emit::IrLowered => text.push_str(&print::diagram(&lower::lower_simd(d), &program.axes)),
            Emit::Instance => {
                let inst = match instantiate(&d.name) {
                    Ok(i) => i,
                    Err(e) => return fail_in(e, &o.sources),
                };
                text.push_str(&print::diagram(&inst.diagram, &inst.axes));
            }
            Emit::Cuda => {
                let inst = match instantiate(&d.name) {
                    Ok(i) => i,
                    Err(e) => return fail_in(e, &o.sources),
                };
                let sizes: Vec<String> = inst
                    .axes
                    .axes
                    .iter()
                    .zip(&inst.sizes)
                    .filter(|(_, n)| **n > 0)
                    .map(|(a, n)| format!("{}={n}", a.name))
                    .collect();
                let title = format!("`{}` of {} at {}", d.name, file.display(), sizes.join(" "));
                let fused = crate::ir::fuse::fuse_attention(&inst);
                match fused.and_then(|(inst, _)| crate::backend::cuda::emit_instance(&inst, &title))
                {
                    Ok((src, _)) => text.push_str(&src),
                    Err(e) => {
                        return fail(
                            e.context(&format!("cannot generate CUDA for `{}`: ", d.name)),
                        );
                    }
                }
            }
            Emit::OptimizedIr => {
                let opts = match instance.bindings() {
                    Ok(b) => crate::opt::Options {
                        sizes: b.sizes,
                        ..Default::default()
                    },
                    Err(e) => return fail(e),
                };
                // The stdlib's rules, loaded once for all the file's diagrams.
                if book.is_none() {
                    match crate::rewrite::rule::RuleBook::stdlib() {
                        Ok(b) => book = Some(b),
                        Err(e) => return fail(e),
                    }
                }
                let book = book.as_ref().expect("loaded above");
                match crate::opt::optimise_diagram(book, program, &d.name, &opts) {
                    Ok((t, report)) => {
                        text.push_str(&report.comment());
                        text.push_str(&t.to_text());
                    }
                    Err(e) => {
                        // Whatever stopped it, the optimiser could not take this diagram.
                        return fail(Error::Optimise(format!(
                            "cannot optimise `{}`: {e}",
                            d.name
                        )));
                    }
                }
            }
        }
    }
    match output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, text) {
                return fail(Error::write(path, e));
            }
        }
        None => out!("{text}"),
    }
    0
}

#[allow(clippy::too_many_arguments)]
pub(super) fn draw(
    file: &Path,
    diagram: Option<&str>,
    expand: usize,
    output: Option<&Path>,
    format: Option<Picture>,
    left_to_right: bool,
    highlight: &[String],
    color: ColorChoice,
) -> i32 {
    use crate::render;
    let format = format.unwrap_or(match output {
        Some(p) if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")) => Picture::Png,
        _ => Picture::Svg,
    });
    if format == Picture::Png && output.is_none() {
        return fail(Error::Usage(
            "a PNG needs an output file (`-o OUT.png`)".into(),
        ));
    }
    let o = match session::check_path(file) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    // An ill-typed diagram is not drawn: its diagnostics are the answer, as for `compile`.
    if print_diagnostics(&o, Format::Human, color) {
        return 1;
    }
    let program = &o.checked.program;
    let root = crate::source::FileId(0);
    let names: Vec<&str> = program
        .diagrams
        .iter()
        .filter(|d| d.span.file == root)
        .map(|d| d.name.as_str())
        .collect();
    let d = match diagram {
        Some(name) => program.diagram(name),
        None => render::default_diagram(program, root),
    };
    let Some(d) = d else {
        let why = match diagram {
            Some(name) => format!(
                "no diagram `{name}` in {}; there are: {}",
                file.display(),
                names.join(", ")
            ),
            None if names.is_empty() => format!("{} defines no diagram", file.display()),
            None => format!(
                "{} defines several diagrams; choose one with --diagram: {}",
                file.display(),
                names.join(", ")
            ),
        };
        return fail(Error::Usage(why));
    };
    let highlight = match render::Highlight::by_wire_names(d, highlight) {
        Ok(h) => h,
        Err(missing) => {
            return fail(Error::Usage(format!(
                "no wire named {} in `{}`",
                missing.join(", "),
                d.name
            )));
        }
    };
    let opts = render::DrawOptions {
        expand,
        flow: if left_to_right {
            render::Flow::LeftToRight
        } else {
            render::Flow::BottomToTop
        },
        highlight,
    };
    let picture = render::draw(program, d, &opts).and_then(|svg| match format {
        Picture::Svg => Ok(svg.into_bytes()),
        Picture::Png => render::png::render(&svg, 2.0),
    });
    let bytes = match picture {
        Ok(b) => b,
        Err(e) => {
            return fail(Error::from(e).context(&format!("`{}`: ", d.name)));
        }
    };
    match output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, bytes) {
                return fail(Error::write(path, e));
            }
        }
        None => {
            output::write(0, &bytes);
        }
    }
    0
}
