//! The command line: a thin layer over the library (clap for parsing). The only module that
//! knows clap and exit codes.
//!
//! Exit codes: 0 success, 1 diagnostics were reported (or a run, a check or training failed),
//! 2 usage, I/O, data, planning or device error, 3 `selftest` without a GPU, 101 internal
//! error; [`exit_code`] maps every [`Error`] to one. Every command prints its errors as
//! `diagc: ...` lines, or as JSON objects on standard output with `--message-format json`.
//!
//! One file per command family: `check` (check, explain), `compile` (compile, draw), `exec`
//! (run, gradcheck), `bench`, `train` (train, eval), `rewrite` (rewrite, derive, enumerate,
//! taxonomy), `selftest`, `data` (data fetch, data status), `compare`.

/// `println!` that never panics: see [`output`].
macro_rules! outln {
    () => { $crate::cli::output::write(0, b"\n") };
    ($($t:tt)*) => { $crate::cli::output::write_fmt(0, format_args!("{}\n", format_args!($($t)*))) };
}

/// `print!` that never panics.
macro_rules! out {
    ($($t:tt)*) => { $crate::cli::output::write_fmt(0, format_args!($($t)*)) };
}

/// `eprintln!` that never panics.
macro_rules! errln {
    () => { $crate::cli::output::write(1, b"\n") };
    ($($t:tt)*) => { $crate::cli::output::write_fmt(1, format_args!("{}\n", format_args!($($t)*))) };
}

/// `eprint!` that never panics.
macro_rules! err {
    ($($t:tt)*) => { $crate::cli::output::write_fmt(1, format_args!($($t)*)) };
}

mod bench;
mod check;
mod compare;
mod compile;
mod data;
mod exec;
pub mod output;
mod rewrite;
mod selftest;
mod sweep;
mod train;

use crate::diagnostic::{ALL_CODES, Code};
use crate::error::Error;
use crate::ir::{lower, print};
use crate::report;
use crate::session::{self, Outcome};
use bench::bench_cmd;
use check::{check, explain};
use clap::{Parser, Subcommand, ValueEnum};
use compile::{compile, draw};
use exec::{gradcheck_cmd, run_cmd};
use selftest::selftest;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use train::{eval_cmd, train_cmd};

#[derive(Parser)]
#[command(
    name = "diagc",
    version,
    about = "A compiler for string diagrams of attention mechanisms and Transformer language models",
    long_about = "diagc reads .diag files (boxes, wires, SIMD regions and reshapes, after \"On the Anatomy of \
                  Attention\"), checks their shapes, and compiles them.\n\nExit codes: 0 success, 1 diagnostics \
                  reported, 2 usage or I/O error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How errors are printed: `human` lines on standard error, or `json`, one object per
    /// line on standard output (`{"kind", "message"}`, or a diagnostic as `check --format
    /// json` prints it). Accepted by every command.
    #[arg(long, global = true, value_enum, default_value = "human")]
    message_format: Format,
}

/// Whether errors are printed as JSON (`--message-format json`, or `--format json` of
/// `check` and `compile`); set once when the arguments are read.
static JSON_ERRORS: AtomicBool = AtomicBool::new(false);

/// The exit code of an error: 1 when the input was read and found wrong (diagnostics, a run
/// or a check that failed, training that failed), 2 when the command could not do its work
/// (usage, I/O, data, planning, the device), 101 for a compiler bug.
pub fn exit_code(e: &Error) -> i32 {
    match e {
        Error::Frontend { .. } | Error::Run(_) | Error::Train(_) | Error::Rewrite(_) => 1,
        Error::Internal { .. } => 101,
        Error::Usage(_)
        | Error::Io { .. }
        | Error::Instance { .. }
        | Error::Autodiff(_)
        | Error::Plan(_)
        | Error::Device(_)
        | Error::Data(_)
        | Error::Checkpoint(_)
        | Error::Optimise(_)
        | Error::Render(_)
        | Error::External(_) => 2,
    }
}

/// Whether the raw arguments ask for JSON errors (`--message-format json` or `=json`), for
/// errors clap finds before the arguments are parsed.
fn json_asked(args: impl Iterator<Item = String>) -> bool {
    let args: Vec<String> = args.collect();
    args.iter().enumerate().any(|(i, a)| {
        a == "--message-format=json"
            || (a == "--message-format" && args.get(i + 1).is_some_and(|v| v == "json"))
    })
}

/// `check` and `compile` print their diagnostics in their `--format`, and their errors follow
/// it; `--message-format json` makes it JSON too. Returns the format in force.
fn json_errors_with(format: Format) -> Format {
    if matches!(format, Format::Json) {
        JSON_ERRORS.store(true, Ordering::Relaxed);
    }
    if JSON_ERRORS.load(Ordering::Relaxed) {
        Format::Json
    } else {
        Format::Human
    }
}

/// Prints `e` as the user asked (`diagc: ...` on standard error, or JSON lines on standard
/// output) and returns its exit code.
fn fail(e: Error) -> i32 {
    print_error(&e);
    exit_code(&e)
}

/// [`fail`] for an error of a checked program whose `sources` are at hand: an instantiation
/// error with a span also says where the axis or hyperparameter is declared.
fn fail_in(e: Error, sources: &crate::source::SourceMap) -> i32 {
    let Error::Instance { span: Some(sp), .. } = &e else {
        return fail(e);
    };
    if sp.file.0 as usize >= sources.files().count() {
        return fail(e);
    }
    let (line, col) = sources.line_col(sp.file, sp.start);
    let path = &sources.get(sp.file).name;
    if JSON_ERRORS.load(Ordering::Relaxed) {
        for mut v in e.to_json() {
            v["path"] = path.as_str().into();
            v["line"] = line.into();
            v["column"] = col.into();
            outln!("{v}");
        }
    } else {
        errln!("diagc: {e}");
        errln!(
            "  --> {path}:{line}:{col} (`{}` is declared here)",
            sources.slice(*sp)
        );
    }
    exit_code(&e)
}

/// Whether `--device` names a device (`cpu`, `cuda` or `auto`, which means the CPU). What
/// `cuda` does without a GPU (run on the CPU, saying why) is the caller's.
fn known_device(device: &str) -> Result<(), Error> {
    match device {
        "cpu" | "auto" | "cuda" => Ok(()),
        other => Err(Error::Usage(format!(
            "unknown device `{other}` (cpu, cuda or auto)"
        ))),
    }
}

/// Prints `e` as the user asked, for an error after which the command goes on.
fn print_error(e: &Error) {
    if JSON_ERRORS.load(Ordering::Relaxed) {
        for v in e.to_json() {
            outln!("{v}");
        }
    } else if let Error::Frontend {
        sources,
        diagnostics,
        context,
    } = e
    {
        let color = use_color(ColorChoice::Auto);
        for d in diagnostics {
            err!("{}", report::render(d, sources, color));
        }
        if !context.is_empty() {
            errln!("diagc: {context}");
        }
    } else {
        errln!("diagc: {e}");
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// Reports with source excerpts, for people.
    Human,
    /// One JSON object per line on standard output, for tools.
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    Fp32,
    Tf32,
}

/// Whether `diagc bench` fuses causal attention into one box per layer (`ir::fuse`).
#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum FuseArg {
    /// On the GPU, not on the CPU (what `diagc train` does on each).
    Auto,
    Yes,
    No,
}

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// The typed IR with SIMD regions visible.
    Ir,
    /// The IR after lowering SIMD regions (every inner box lifted by its region's axis).
    IrLowered,
    /// The executable form of one diagram (`--diagram`): calls inlined, repeats unrolled, SIMD
    /// lowered, parameters as inputs. Needs `--size` for free axes.
    Instance,
    /// The diagram after the optimiser (dead boxes, constant folding, common subexpressions,
    /// simplification and cost-driven reassociation by `equal` rules), as `.diag` text headed by
    /// what each pass did. `--size` gives the cost model its sizes (unbound ones are assumed:
    /// tok 1024, dm 512, head 4, dff 2048, vocab 10000, batch 20, any other 512).
    OptimizedIr,
    /// The generated CUDA C of the executable form (as `instance`; needs `--size` for free
    /// axes), with causal softmax attention fused as the GPU trainer runs it: the forward
    /// kernels and the gradient's, one kernel per step of the plan with its sizes and
    /// strides as constants (fused attention of head size 32, 64, 96 or 128 on the flash
    /// kernels), headed by the launch sequence. Self-contained: NVRTC compiles it alone.
    Cuda,
}

/// Sizes and hyperparameters that make a diagram concrete.
#[derive(clap::Args, Clone, Default)]
pub struct InstanceArgs {
    /// The size of a free axis, as NAME=N (repeatable): `--size dm=512 --size head=4`.
    #[arg(long = "size", value_name = "NAME=N")]
    sizes: Vec<String>,
    /// A hyperparameter of the diagram, as NAME=VALUE (repeatable): `--hyper layers=2`,
    /// `--hyper mech=m0`.
    #[arg(long = "hyper", value_name = "NAME=VALUE")]
    hypers: Vec<String>,
}

impl InstanceArgs {
    /// Stdlib modules (`attention.NAME`) for `--hyper x=NAME` values naming a mechanism.
    pub fn mechanism_modules(&self) -> Vec<String> {
        self.hypers
            .iter()
            .filter_map(|s| s.split_once('=').map(|(_, v)| v.trim().to_string()))
            .filter(|v| crate::stdlib::mechanisms().any(|m| m == *v))
            .map(|v| format!("attention.{v}"))
            .collect()
    }

    /// The bindings these flags give, or a usage error.
    pub fn bindings(&self) -> Result<crate::ir::instance::Bindings, Error> {
        use crate::ir::instance::{Bindings, HyperValue};
        let mut b = Bindings::default();
        for s in &self.sizes {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| Error::Usage(format!("`--size {s}`: expected NAME=N")))?;
            let n: u64 = v
                .trim()
                .parse()
                .map_err(|_| Error::Usage(format!("`--size {s}`: {v} is not a whole number")))?;
            if n == 0 {
                return Err(Error::Usage(format!("`--size {s}`: sizes are positive")));
            }
            b.sizes.insert(k.trim().to_string(), n);
        }
        for s in &self.hypers {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| Error::Usage(format!("`--hyper {s}`: expected NAME=VALUE")))?;
            let v = v.trim();
            let value = match v.parse::<f64>() {
                Ok(x) if x.is_finite() => HyperValue::Num(x),
                _ => HyperValue::Diagram(v.to_string()),
            };
            b.hypers.insert(k.trim().to_string(), value);
        }
        Ok(b)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Check .diag files (and the modules they use); report every error found.
    Check {
        /// Files to check; a directory means every .diag file under it. Each file is checked
        /// on its own, with the modules it `use`s.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
        #[arg(long, value_enum, default_value = "auto")]
        color: ColorChoice,
        /// Also compare both sides of every `equal` rule in the files numerically on random
        /// inputs (CPU interpreter); a rule whose sides differ is rejected (exit 1).
        #[arg(long)]
        verify_rules: bool,
        /// Also prove every diagram of the files that has an input along AXIS (`--causal=AXIS`;
        /// `--causal` alone: `tok`)
        /// causal along it: no output position depends on a later input position. Where the
        /// proof fails, an E0601 error names the box and the wire through which the future
        /// leaks (`diagc explain E0601`). Diagram-valued hyperparameters take their defaults.
        #[arg(long, value_name = "AXIS", num_args = 0..=1, require_equals = true, default_missing_value = "tok")]
        causal: Option<String>,
        /// With --causal, also probe each of those diagrams on the f64 interpreter: at small
        /// sizes (the position axis 8, other free axes 4), redraw each later input position
        /// and report an earlier output that changes (evidence, where --causal is the proof).
        #[arg(long, requires = "causal")]
        causal_probe: bool,
    },
    /// Explain an error code (`diagc explain E0204`), or list them all (`--list`).
    Explain {
        /// The code, such as E0204.
        #[arg(required_unless_present = "list")]
        code: Option<String>,
        /// List every code with its title.
        #[arg(long)]
        list: bool,
    },
    /// Run a diagram on seeded random inputs and parameters (CPU reference interpreter) and
    /// print a summary of each output.
    Run {
        file: PathBuf,
        /// The diagram to run (default: the only diagram, or the last one, of FILE).
        #[arg(long)]
        diagram: Option<String>,
        #[command(flatten)]
        instance: InstanceArgs,
        /// Seeds the inputs, the parameters and dropout.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Training mode (dropout active).
        #[arg(long)]
        train: bool,
        /// Stop at the first box that produces a NaN or an infinity, naming it.
        #[arg(long)]
        check_finite: bool,
        /// Also write the inputs, parameters, outputs and the gradients of the sum of the
        /// outputs to this JSON file (for comparisons with other implementations).
        #[arg(long, value_name = "FILE")]
        save: Option<PathBuf>,
    },
    /// Compare every gradient (inputs and parameters) with central finite differences in f64;
    /// exit 1 when the worst error is above the tolerance.
    Gradcheck {
        file: PathBuf,
        /// The diagram to check (default: the only diagram, or the last one, of FILE).
        #[arg(long)]
        diagram: Option<String>,
        #[command(flatten)]
        instance: InstanceArgs,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Elements checked per input tensor at most (chosen at random).
        #[arg(long, default_value_t = 32)]
        samples: usize,
        /// The largest acceptable |analytic - numeric| / max(|analytic|, |numeric|, 1).
        #[arg(long, default_value_t = 1e-6)]
        tolerance: f64,
        /// Check in training mode (dropout active, with fixed masks).
        #[arg(long)]
        train: bool,
    },
    /// Time one training step (forward, backward through the loss, clipping, Adam) of the
    /// language model at the protocol's sizes on the CPU, and optionally PyTorch's in the same
    /// run (`--pytorch`, needs python3 with torch) with the ratio.
    Bench(bench::BenchArgs),
    /// Train a language model around a mechanism on Penn Treebank (the protocol of
    /// docs/experiment.md) and print its perplexities. The run directory keeps everything
    /// needed to continue or evaluate it. Ctrl-C, SIGTERM and SIGUSR1 save the state at the
    /// next step and exit 128 + the signal's number (130, 143, 138); --resume continues. A
    /// diverged run exits 1.
    Train(Box<train::TrainArgs>),
    /// Training data: fetch the Penn Treebank (`diagc data fetch ptb`), or show where each split
    /// is found and whether its checksum matches (`diagc data status`).
    Data {
        #[command(subcommand)]
        cmd: data::DataCmd,
    },
    /// Perplexity of a run's checkpoint (best or last) on a split, with the model the run
    /// copied when it started.
    Eval(train::EvalArgs),
    /// The paper's experiment as one command: plan a sweep file (mechanisms x depths x seeds,
    /// per-model learning rates, a timing phase) into a directory, run it here (or one entry at
    /// a time under a scheduler), see how far it is, and write its results and report.
    Sweep {
        #[command(subcommand)]
        cmd: sweep::SweepCmd,
    },
    /// Compare `diagc train` run directories: print a table per model (runs that differ only
    /// by seed are one model) and per run, and with -o write the sweep report's page for them
    /// (results, validation curves, mechanisms; self-contained HTML).
    Compare {
        /// Run directories (each with a config.json; unfinished runs are shown as they stand).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Write the HTML report here.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Check a file and print its compiled form.
    Compile {
        file: PathBuf,
        /// Only this diagram (default: every diagram defined in FILE).
        #[arg(long)]
        diagram: Option<String>,
        /// What to print.
        #[arg(long, value_enum)]
        emit: Emit,
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        instance: InstanceArgs,
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
        #[arg(long, value_enum, default_value = "auto")]
        color: ColorChoice,
    },
    /// Draw a diagram as a picture: boxes, wires with their types, SIMD regions as tubes.
    Draw {
        file: PathBuf,
        /// The diagram to draw (default: the one diagram in FILE that no other diagram in FILE
        /// uses, such as `lm` in stdlib/lm.diag).
        #[arg(long)]
        diagram: Option<String>,
        /// Expand composite boxes this many levels deep (0: every composite box closed).
        #[arg(long, default_value_t = 0)]
        expand: usize,
        /// Write the picture here (default: SVG on standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The picture's format (default: PNG if OUTPUT ends in .png, else SVG).
        #[arg(long, value_enum)]
        format: Option<Picture>,
        /// Inputs on the left and outputs on the right (default: inputs at the bottom).
        #[arg(long)]
        left_to_right: bool,
        /// Highlight the wires with these names (comma-separated) and the boxes producing them.
        #[arg(long, value_delimiter = ',')]
        highlight: Vec<String>,
        #[arg(long, value_enum, default_value = "auto")]
        color: ColorChoice,
    },
    /// Apply rewrite rules to a diagram and print the result as .diag text. Rules come from the
    /// stdlib (stdlib/rules/) and from --rules files; `diagc rewrite --list` lists them.
    Rewrite(rewrite::RewriteArgs),
    /// Replay a derivation step by step, checking each: the rule applies at its site, the result
    /// types, `equal` steps agree numerically, and the end is the expected diagram. DERIVATION is
    /// a stdlib derivation's name (`diagc derive --list`) or a .derive file.
    Derive {
        #[arg(required_unless_present = "list")]
        derivation: Option<String>,
        /// Extra .diag files with `rule` declarations.
        #[arg(long, value_name = "FILE")]
        rules: Vec<PathBuf>,
        /// Print the diagram after every step.
        #[arg(long)]
        trace: bool,
        /// List the stdlib's derivations.
        #[arg(long)]
        list: bool,
        /// Also draw each step as DIR/stepN.svg.
        #[arg(long, value_name = "DIR")]
        draw: Option<PathBuf>,
    },
    /// Recombine the generators of stdlib/anatomy/spec.diag (or of --spec FILE) exhaustively,
    /// remove redundant mechanisms (canonical form modulo equal rules) and write them as
    /// m00.diag, m01.diag... The stdlib's generator set beyond M0 and M1 is the project's
    /// reconstruction, not the paper's.
    Enumerate {
        /// The output directory [default: stdlib/anatomy; required with --spec].
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Write nothing; exit 1 if the files in OUTPUT differ from a fresh enumeration.
        #[arg(long)]
        check: bool,
        /// A .diag file with the generators to recombine instead of the paper's
        /// reconstruction: every diagram named gen_NAME(q, k, v: [tok, head, dk]) -> [tok,
        /// head, dk] is generator NAME (examples/modern-anatomy/spec.diag).
        #[arg(long, value_name = "FILE")]
        spec: Option<PathBuf>,
    },
    /// Print the taxonomy of attention: the graph of the stdlib's derivations from primordial
    /// attention to the literature's variants, each edge replayed and checked, labelled by its
    /// rules, each node linked to its stdlib file and coloured by its class (stdlib/zoo.toml).
    /// Which variants the paper's Figure 1 shows is not known. `--format md` writes the
    /// registry page of every stdlib mechanism (docs/variants.md).
    Taxonomy {
        /// The output format.
        #[arg(long, value_enum, default_value = "dot")]
        format: TaxonomyFormat,
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Check the CUDA backend against the CPU executor on this machine's GPU: every kernel
    /// module compiles and loads; every primitive and stdlib mechanism, forward and gradient,
    /// agrees with the CPU (launch by launch, from a CUDA graph, and with products on the
    /// generated kernel); one training step of the 1-layer LM (M1, M0) agrees; 200 training
    /// steps on both devices give the same losses. Exit 0 when all pass, 1 when one fails, 3
    /// when there is no GPU.
    Selftest {
        /// The backend to check; only `cuda` exists (the CPU executor is the reference).
        #[arg(long, default_value = "cuda")]
        device: String,
        /// Smaller mechanism sizes (tok 8, dm 16, head 2 instead of 35, 64, 4) and 20 training
        /// steps instead of 200.
        #[arg(long)]
        quick: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TaxonomyFormat {
    /// A Graphviz digraph.
    Dot,
    Json,
    /// A picture, one row per distance from the root.
    Svg,
    /// The same picture rasterised (needs `--output`).
    Png,
    /// The registry page (docs/variants.md): every stdlib mechanism with its formula, paper,
    /// file, class, derivation path or the reason it has none, parameters and picture.
    Md,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Picture {
    Svg,
    Png,
}

/// Runs the CLI on a thread with a large stack (deep but bounded recursion over user input
/// must not depend on the platform's main-thread stack) and returns the exit code.
pub fn main() -> i32 {
    let worker = std::thread::Builder::new().stack_size(256 << 20).spawn(run);
    match worker.map(|h| h.join()) {
        Ok(Ok(code)) => output::finish(code),
        _ => {
            errln!("diagc: internal error (this is a bug; please report it with the input)");
            101
        }
    }
}

fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() && json_asked(std::env::args()) => {
            // A usage error found by clap, for a tool that asked for JSON errors.
            JSON_ERRORS.store(true, Ordering::Relaxed);
            // Clap's message is the paragraph before its usage line.
            let text = e.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            return fail(Error::Usage(
                message.join(" ").trim_start_matches("error: ").to_string(),
            ));
        }
        Err(e) => {
            let text = e.render().to_string();
            output::write(usize::from(e.use_stderr()), text.as_bytes());
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    JSON_ERRORS.store(
        matches!(cli.message_format, Format::Json),
        Ordering::Relaxed,
    );
    match cli.command {
        Command::Check {
            files,
            format,
            color,
            verify_rules,
            causal,
            causal_probe,
        } => {
            let format = json_errors_with(format);
            check(
                &files,
                format,
                color,
                verify_rules,
                causal.as_deref(),
                causal_probe,
            )
        }
        Command::Explain { code, list } => explain(code.as_deref(), list),
        Command::Run {
            file,
            diagram,
            instance,
            seed,
            train,
            check_finite,
            save,
        } => run_cmd(
            &file,
            diagram.as_deref(),
            &instance,
            seed,
            train,
            check_finite,
            save.as_deref(),
        ),
        Command::Gradcheck {
            file,
            diagram,
            instance,
            seed,
            samples,
            tolerance,
            train,
        } => gradcheck_cmd(
            &file,
            diagram.as_deref(),
            &instance,
            seed,
            samples,
            tolerance,
            train,
        ),
        Command::Bench(args) => bench_cmd(&args),
        Command::Train(args) => train_cmd(&args),
        Command::Eval(args) => eval_cmd(&args),
        Command::Compare { runs, output } => compare::compare_cmd(&runs, output.as_deref()),
        Command::Data { cmd } => data::data_cmd(cmd),
        Command::Sweep { cmd } => sweep::sweep_cmd(cmd),
        Command::Compile {
            file,
            diagram,
            emit,
            output,
            instance,
            format,
            color,
        } => {
            let format = json_errors_with(format);
            compile(
                &file,
                diagram.as_deref(),
                emit,
                output.as_deref(),
                &instance,
                format,
                color,
            )
        }
        Command::Draw {
            file,
            diagram,
            expand,
            output,
            format,
            left_to_right,
            highlight,
            color,
        } => draw(
            &file,
            diagram.as_deref(),
            expand,
            output.as_deref(),
            format,
            left_to_right,
            &highlight,
            color,
        ),
        Command::Rewrite(args) => rewrite::rewrite(args),
        Command::Derive {
            derivation,
            rules,
            trace,
            list,
            draw,
        } => rewrite::derive(derivation, &rules, trace, list, draw),
        Command::Enumerate {
            output,
            check,
            spec,
        } => rewrite::enumerate(output.as_deref(), check, spec.as_deref()),
        Command::Taxonomy { format, output } => rewrite::taxonomy(format, output.as_deref()),
        Command::Selftest { device, quick } => selftest(&device, quick),
    }
}

fn use_color(c: ColorChoice) -> bool {
    match c {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
        }
    }
}

/// Prints an outcome's diagnostics; returns whether there were any.
fn print_diagnostics(o: &Outcome, format: Format, color: ColorChoice) -> bool {
    // `--message-format json` asks for every message as JSON, diagnostics included.
    let format = if JSON_ERRORS.load(Ordering::Relaxed) {
        Format::Json
    } else {
        format
    };
    let color = use_color(color);
    for d in &o.checked.diagnostics {
        match format {
            Format::Human => err!("{}", report::render(d, &o.sources, color)),
            // For tools: JSON lines on standard output, where a pipe reads them.
            Format::Json => outln!("{}", report::to_json(d, &o.sources)),
        }
    }
    if o.checked.suppressed > 0 && matches!(format, Format::Human) {
        errln!("... and {} more errors", o.checked.suppressed);
    }
    !o.checked.diagnostics.is_empty()
}
