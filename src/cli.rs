//! The command line: a thin layer over the library (clap for parsing).
//!
//! Exit codes: 0 success, 1 diagnostics were reported, 2 usage or I/O error.

use crate::diagnostic::{ALL_CODES, Code};
use crate::driver::{self, Outcome};
use crate::ir::{lower, print};
use crate::report;
use clap::{Parser, Subcommand, ValueEnum};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

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
    /// kernels and the gradient's, one kernel per step of the CPU plan with its sizes and
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
    pub fn bindings(&self) -> Result<crate::ir::instance::Bindings, String> {
        use crate::ir::instance::{Bindings, HyperValue};
        let mut b = Bindings::default();
        for s in &self.sizes {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| format!("`--size {s}`: expected NAME=N"))?;
            let n: u64 = v
                .trim()
                .parse()
                .map_err(|_| format!("`--size {s}`: {v} is not a whole number"))?;
            if n == 0 {
                return Err(format!("`--size {s}`: sizes are positive"));
            }
            b.sizes.insert(k.trim().to_string(), n);
        }
        for s in &self.hypers {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| format!("`--hyper {s}`: expected NAME=VALUE"))?;
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
    Bench {
        /// The mechanism (a stdlib name: m1, m0, bahdanau, ...).
        mech: String,
        #[arg(long, default_value_t = 1)]
        layers: usize,
        #[arg(long, default_value_t = 20)]
        batch_size: usize,
        #[arg(long, default_value_t = 35)]
        bptt: usize,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Also run bench/pytorch_lm_step.py with the same configuration and print the ratio.
        #[arg(long)]
        pytorch: bool,
        /// Repeat the measurement this many times, alternating diagc and PyTorch (with
        /// `--pytorch`), and report every round and the median ratio: on a shared machine the
        /// load changes within a minute, and alternating exposes both sides to it alike.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
        rounds: u32,
        /// Also list the N slowest steps of one forward+backward on the CPU, each with the
        /// boxes it computes (and the GFLOP/s of a product): where a mechanism's time goes.
        #[arg(long, default_value_t = 0)]
        top: usize,
        /// Run every step on the precompiled kernels (the interpreter path), without the
        /// cranelift-fused elementwise kernels.
        #[arg(long)]
        no_jit: bool,
        /// Fuse causal softmax and linear attention into one box per layer (flash and linear
        /// attention kernels on the GPU). `auto`: on the GPU, not on the CPU, as `diagc train`.
        #[arg(long, value_enum, default_value = "auto")]
        fuse_attention: FuseArg,
        /// cpu, cuda or auto (auto means cpu). `cuda` times the step on the GPU (one CUDA graph
        /// per step, attention fused); without a GPU it says why and runs on the CPU.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Products on the GPU: fp32, or tf32 (tensor cores, 10-bit mantissa inputs).
        #[arg(long, value_enum, default_value = "fp32")]
        precision: PrecisionArg,
    },
    /// Train a language model around a mechanism on Penn Treebank (the protocol of
    /// docs/experiment.md) and print its perplexities. Ctrl-C saves the state; --resume continues.
    Train {
        /// The mechanism: a stdlib name (m1, m0, bahdanau, ...) or a path to a .diag file
        /// defining a diagram from [tok, dm] to [tok, dm].
        #[arg(required_unless_present = "resume")]
        mech: Option<String>,
        #[arg(long, default_value_t = 1)]
        layers: usize,
        #[arg(long, default_value_t = 512)]
        d_model: usize,
        #[arg(long, default_value_t = 4)]
        heads: usize,
        #[arg(long, default_value_t = 2048)]
        d_ff: usize,
        #[arg(long, default_value_t = 0.1)]
        dropout: f64,
        #[arg(long, default_value_t = 35)]
        bptt: usize,
        #[arg(long, default_value_t = 20)]
        batch_size: usize,
        #[arg(long, default_value_t = 1)]
        epochs: usize,
        /// Stop after this many steps in all.
        #[arg(long)]
        steps: Option<usize>,
        #[arg(long, default_value_t = 4000)]
        warmup: u64,
        #[arg(long, default_value_t = 1.0)]
        lr_scale: f64,
        /// Global gradient-norm clipping (0 disables).
        #[arg(long, default_value_t = 1.0)]
        clip: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Validate every N steps too (besides every epoch).
        #[arg(long)]
        valid_every: Option<usize>,
        /// Train on the first N tokens only (quick runs).
        #[arg(long)]
        train_tokens: Option<usize>,
        /// Evaluate on the first N validation and test tokens only (quick runs).
        #[arg(long)]
        eval_tokens: Option<usize>,
        /// The PTB directory (default: $DIAGC_DATA, else ../shared/data/ptb).
        #[arg(long)]
        data: Option<PathBuf>,
        /// The run directory (default: runs/MECH-Ll-seedS).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue the run in this directory from its last checkpoint.
        #[arg(long, value_name = "RUN_DIR")]
        resume: Option<PathBuf>,
        /// cpu, cuda or auto (auto means cpu). `cuda` trains and evaluates on the GPU (each step
        /// one CUDA graph, attention fused); without a GPU it says why and runs on the CPU.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Run every step on the precompiled kernels (the interpreter path), without the
        /// cranelift-fused elementwise kernels (the same results, bit for bit).
        #[arg(long)]
        no_jit: bool,
    },
    /// Perplexity of a run's best checkpoint on a split.
    Eval {
        run_dir: PathBuf,
        #[arg(long, default_value = "test")]
        split: String,
        #[arg(long)]
        data: Option<PathBuf>,
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
    Rewrite(crate::rewrite::cli::RewriteArgs),
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
    /// Recombine the generators of stdlib/anatomy/spec.diag exhaustively, remove redundant
    /// mechanisms (canonical form modulo equal rules) and write them as m00.diag .. m13.diag.
    /// The generator set beyond M0 and M1 is the project's reconstruction, not the paper's.
    Enumerate {
        /// The output directory.
        #[arg(short, long, default_value = "stdlib/anatomy")]
        output: PathBuf,
        /// Write nothing; exit 1 if the files in OUTPUT differ from a fresh enumeration.
        #[arg(long)]
        check: bool,
    },
    /// Print the taxonomy of attention: the graph of the stdlib's derivations from primordial
    /// attention to the literature's variants, each edge replayed and checked, labelled by its
    /// rules, each node linked to its stdlib file. Which variants the paper's Figure 1 shows is
    /// not known.
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
        Ok(Ok(code)) => code,
        _ => {
            eprintln!("diagc: internal error (this is a bug; please report it with the input)");
            101
        }
    }
}

fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match cli.command {
        Command::Check {
            files,
            format,
            color,
            verify_rules,
        } => check(&files, format, color, verify_rules),
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
        Command::Bench {
            mech,
            layers,
            batch_size,
            bptt,
            steps,
            pytorch,
            rounds,
            top,
            no_jit,
            fuse_attention,
            device,
            precision,
        } => bench_cmd(
            &mech,
            layers,
            batch_size,
            bptt,
            (steps, !no_jit, fuse_attention, rounds as usize, top),
            pytorch,
            &device,
            precision,
        ),
        Command::Train {
            mech,
            layers,
            d_model,
            heads,
            d_ff,
            dropout,
            bptt,
            batch_size,
            epochs,
            steps,
            warmup,
            lr_scale,
            clip,
            seed,
            valid_every,
            train_tokens,
            eval_tokens,
            data,
            out,
            resume,
            device,
            no_jit,
        } => {
            let model = crate::train::model::ModelConfig {
                mech: mech.unwrap_or_default(),
                layers,
                d_model,
                heads,
                d_ff,
                vocab: 10_000,
                bptt,
                batch: batch_size,
                dropout,
            };
            let cfg = crate::train::run::TrainConfig {
                model,
                epochs,
                max_steps: steps,
                warmup,
                lr_scale,
                clip,
                seed,
                eval_batch: 10,
                valid_every,
                train_tokens,
                eval_tokens,
            };
            train_cmd(cfg, data.as_deref(), out, resume, &device, !no_jit)
        }
        Command::Eval {
            run_dir,
            split,
            data,
        } => eval_cmd(&run_dir, &split, data.as_deref()),
        Command::Compile {
            file,
            diagram,
            emit,
            output,
            instance,
            format,
            color,
        } => compile(
            &file,
            diagram.as_deref(),
            emit,
            output.as_deref(),
            &instance,
            format,
            color,
        ),
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
        Command::Rewrite(args) => crate::rewrite::cli::rewrite(args),
        Command::Derive {
            derivation,
            rules,
            trace,
            list,
            draw,
        } => crate::rewrite::cli::derive(derivation, &rules, trace, list, draw),
        Command::Enumerate { output, check } => crate::rewrite::cli::enumerate(&output, check),
        Command::Taxonomy { format, output } => {
            crate::rewrite::cli::taxonomy(format, output.as_deref())
        }
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
    let color = use_color(color);
    let mut err = std::io::stderr().lock();
    for d in &o.checked.diagnostics {
        let _ = match format {
            Format::Human => write!(err, "{}", report::render(d, &o.sources, color)),
            // For tools: JSON lines on standard output, where a pipe reads them.
            Format::Json => writeln!(std::io::stdout(), "{}", report::to_json(d, &o.sources)),
        };
    }
    if o.checked.suppressed > 0 && matches!(format, Format::Human) {
        let _ = writeln!(err, "... and {} more errors", o.checked.suppressed);
    }
    !o.checked.diagnostics.is_empty()
}

/// Expands directories into the .diag files under them, sorted.
fn expand(files: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for f in files {
        if f.is_dir() {
            let mut found = Vec::new();
            walk(f, &mut found).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
            found.sort();
            out.extend(found);
        } else {
            out.push(f.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "diag") {
            out.push(p);
        }
    }
    Ok(())
}

fn check(files: &[PathBuf], format: Format, color: ColorChoice, verify_rules: bool) -> i32 {
    let files = match expand(files) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("diagc: {e}");
            return 2;
        }
    };
    let mut any_errors = false;
    let mut io_error = false;
    let mut total = 0;
    for f in &files {
        match driver::check_path(f) {
            Ok(o) => {
                total += o.checked.diagnostics.len() + o.checked.suppressed;
                let failed = print_diagnostics(&o, format, color);
                any_errors |= failed;
                if verify_rules && !failed {
                    for (rule, verdict) in crate::rewrite::verify::verify_rules(&o.checked.program)
                    {
                        match verdict {
                            Ok(line) => eprintln!("rule `{rule}`: {line}"),
                            Err(e) => {
                                eprintln!("diagc: rule `{rule}` ({}): {e}", f.display());
                                any_errors = true;
                                total += 1;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                eprintln!("diagc: {e}");
                io_error = true;
            }
        }
    }
    if matches!(format, Format::Human) {
        if any_errors {
            eprintln!("{total} error(s) in {} file(s) checked", files.len());
        } else if !io_error {
            eprintln!("{} file(s) checked, no errors", files.len());
        }
    }
    if io_error {
        2
    } else if any_errors {
        1
    } else {
        0
    }
}

fn explain(code: Option<&str>, list: bool) -> i32 {
    if list {
        for c in ALL_CODES {
            println!("{}", c.title());
        }
        return 0;
    }
    let code = code.unwrap_or_default();
    match Code::parse(code) {
        Some(c) => {
            print!("{}", c.explanation());
            0
        }
        None => {
            eprintln!("diagc: no error code `{code}`; `diagc explain --list` lists them");
            2
        }
    }
}

fn compile(
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
    let o = match driver::check_path_with(file, &extra) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("diagc: {e}");
            return 2;
        }
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
                eprintln!(
                    "diagc: no diagram `{name}` in {}; there are: {}",
                    file.display(),
                    names.join(", ")
                );
                return 2;
            }
        },
        None => program
            .diagrams
            .iter()
            .filter(|d| d.span.file == root)
            .collect(),
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
                let inst = match instance
                    .bindings()
                    .and_then(|b| crate::ir::instance::instantiate(program, &d.name, &b))
                {
                    Ok(i) => i,
                    Err(e) => {
                        eprintln!("diagc: {e}");
                        return 2;
                    }
                };
                text.push_str(&print::diagram(&inst.diagram, &inst.axes));
            }
            Emit::Cuda => {
                let inst = match instance
                    .bindings()
                    .and_then(|b| crate::ir::instance::instantiate(program, &d.name, &b))
                {
                    Ok(i) => i,
                    Err(e) => {
                        eprintln!("diagc: {e}");
                        return 2;
                    }
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
                let inst = crate::ir::fuse::fuse_attention(&inst).0;
                match crate::backend::cuda::emit_instance(&inst, &title) {
                    Ok((src, _)) => text.push_str(&src),
                    Err(e) => {
                        eprintln!("diagc: cannot generate CUDA for `{}`: {e}", d.name);
                        return 2;
                    }
                }
            }
            Emit::OptimizedIr => {
                let opts = match instance.bindings() {
                    Ok(b) => crate::opt::Options {
                        sizes: b.sizes,
                        ..Default::default()
                    },
                    Err(e) => {
                        eprintln!("diagc: {e}");
                        return 2;
                    }
                };
                // The stdlib's rules, loaded once for all the file's diagrams.
                if book.is_none() {
                    match crate::rewrite::rule::RuleBook::stdlib() {
                        Ok(b) => book = Some(b),
                        Err(e) => {
                            eprintln!("diagc: {e}");
                            return 2;
                        }
                    }
                }
                let book = book.as_ref().expect("loaded above");
                match crate::opt::optimise_diagram(book, program, &d.name, &opts) {
                    Ok((t, report)) => {
                        text.push_str(&report.comment());
                        text.push_str(&t.to_text());
                    }
                    Err(e) => {
                        eprintln!("diagc: cannot optimise `{}`: {e}", d.name);
                        return 2;
                    }
                }
            }
        }
    }
    match output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, text) {
                eprintln!("diagc: cannot write {}: {e}", path.display());
                return 2;
            }
        }
        None => print!("{text}"),
    }
    0
}

/// Checks FILE and instantiates one of its diagrams; prints what went wrong and returns the
/// exit code on failure.
fn load_instance(
    file: &Path,
    diagram: Option<&str>,
    instance: &InstanceArgs,
) -> Result<crate::ir::instance::Instance, i32> {
    let extra: Vec<String> = instance.mechanism_modules();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let o = driver::check_path_with(file, &extra).map_err(|e| {
        eprintln!("diagc: {e}");
        2
    })?;
    if print_diagnostics(&o, Format::Human, ColorChoice::Auto) {
        return Err(1);
    }
    let program = &o.checked.program;
    let root = crate::source::FileId(0);
    let name = match diagram {
        Some(n) => n.to_string(),
        None => match program.diagrams.iter().rfind(|d| d.span.file == root) {
            Some(d) => d.name.clone(),
            None => {
                eprintln!("diagc: {} defines no diagram", file.display());
                return Err(2);
            }
        },
    };
    instance
        .bindings()
        .and_then(|b| crate::ir::instance::instantiate(program, &name, &b))
        .map_err(|e| {
            eprintln!("diagc: {e}");
            2
        })
}

fn run_cmd(
    file: &Path,
    diagram: Option<&str>,
    instance: &InstanceArgs,
    seed: u64,
    train: bool,
    check_finite: bool,
    save: Option<&Path>,
) -> i32 {
    use crate::backend::cpu::{harness, interp::RunOptions};
    let inst = match load_instance(file, diagram, instance) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let opts = RunOptions {
        train,
        seed,
        check_finite,
    };
    let outs = match harness::run_random(&inst, seed, opts) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("diagc: run failed: {e}");
            return 1;
        }
    };
    if let Some(path) = save {
        let record = match harness::record(&inst, seed, opts) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("diagc: run failed: {e}");
                return 1;
            }
        };
        let text = serde_json::to_string(&record).expect("JSON values serialise");
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("diagc: cannot write {}: {e}", path.display());
            return 2;
        }
    }
    println!(
        "{}: {} parameters in {} tensors, seed {seed}",
        inst.diagram.name,
        inst.parameter_count(),
        inst.params.len()
    );
    for (k, t) in outs.iter().enumerate() {
        let axes: Vec<String> = t
            .axes
            .iter()
            .zip(t.data.shape())
            .map(|(a, n)| format!("{}={n}", inst.axes.name(*a)))
            .collect();
        let n = t.data.len().max(1) as f64;
        let mean = t.data.sum() / n;
        let std = (t.data.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let min = t.data.iter().copied().fold(f64::INFINITY, f64::min);
        let max = t.data.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let first: Vec<String> = t.data.iter().take(4).map(|x| format!("{x:.5}")).collect();
        println!(
            "output {k} [{}]: mean {mean:.6} std {std:.6} min {min:.6} max {max:.6} first [{}]",
            axes.join(", "),
            first.join(", ")
        );
    }
    0
}

fn gradcheck_cmd(
    file: &Path,
    diagram: Option<&str>,
    instance: &InstanceArgs,
    seed: u64,
    samples: usize,
    tolerance: f64,
    train: bool,
) -> i32 {
    let inst = match load_instance(file, diagram, instance) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let report = match crate::backend::cpu::harness::gradcheck(&inst, seed, samples, train) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("diagc: gradcheck failed to run: {e}");
            return 1;
        }
    };
    for (name, n, worst) in &report.per_input {
        println!("{worst:10.3e}  {name} ({n} elements)");
    }
    let verdict = if report.worst <= tolerance {
        "ok"
    } else {
        "FAILED"
    };
    println!(
        "worst error {:.3e} at {} (tolerance {tolerance:.1e}): {verdict}",
        report.worst, report.worst_at
    );
    if report.worst <= tolerance { 0 } else { 1 }
}

#[allow(clippy::too_many_arguments)]
fn draw(
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
        eprintln!("diagc: a PNG needs an output file (`-o OUT.png`)");
        return 2;
    }
    let o = match driver::check_path(file) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("diagc: {e}");
            return 2;
        }
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
        match diagram {
            Some(name) => eprintln!(
                "diagc: no diagram `{name}` in {}; there are: {}",
                file.display(),
                names.join(", ")
            ),
            None if names.is_empty() => eprintln!("diagc: {} defines no diagram", file.display()),
            None => eprintln!(
                "diagc: {} defines several diagrams; choose one with --diagram: {}",
                file.display(),
                names.join(", ")
            ),
        }
        return 2;
    };
    let highlight = match render::Highlight::by_wire_names(d, highlight) {
        Ok(h) => h,
        Err(missing) => {
            eprintln!(
                "diagc: no wire named {} in `{}`",
                missing.join(", "),
                d.name
            );
            return 2;
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
            eprintln!("diagc: `{}`: {e}", d.name);
            return 2;
        }
    };
    match output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, bytes) {
                eprintln!("diagc: cannot write {}: {e}", path.display());
                return 2;
            }
        }
        None => {
            let _ = std::io::stdout().write_all(&bytes);
        }
    }
    0
}

#[allow(clippy::too_many_arguments)]
fn bench_cmd(
    mech: &str,
    layers: usize,
    batch: usize,
    bptt: usize,
    (steps, jit, fuse, rounds, top): (usize, bool, FuseArg, usize, usize),
    pytorch: bool,
    device: &str,
    precision: PrecisionArg,
) -> i32 {
    let cfg = crate::train::model::ModelConfig {
        mech: mech.to_string(),
        layers,
        batch,
        bptt,
        ..Default::default()
    };
    match device {
        "cpu" | "auto" => {}
        "cuda" => {
            use crate::backend::cuda::runtime::{Gpu, Precision};
            let p = match precision {
                PrecisionArg::Fp32 => Precision::Fp32,
                PrecisionArg::Tf32 => Precision::Tf32,
            };
            match Gpu::open(p) {
                Ok(gpu) => {
                    let fuse = fuse != FuseArg::No;
                    return bench_cuda(&gpu, &cfg, (steps.max(1), fuse), pytorch, precision);
                }
                Err(why) => eprintln!("diagc: --device cuda: {why}; running on the CPU"),
            }
        }
        other => {
            eprintln!("diagc: unknown device `{other}` (cpu, cuda or auto)");
            return 2;
        }
    }
    let fuse = fuse == FuseArg::Yes;
    let mut rows: Vec<Round> = Vec::new();
    for round in 0..rounds {
        let r = match crate::train::bench::bench(&cfg, steps.max(1), 0, jit, fuse) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("diagc: {e}");
                return 2;
            }
        };
        if round == 0 {
            print_cpu_bench(&r, &cfg, (jit, fuse), top);
        }
        let mut theirs = None;
        if pytorch {
            // PyTorch gets as many threads as diagc's pool.
            let threads = crate::backend::cpu::exec::kernels::cores().to_string();
            match run_pytorch(&cfg, steps.max(1), &["--threads", &threads]) {
                Ok(v) => {
                    if round == 0 {
                        print_pytorch(
                            &v,
                            "",
                            8,
                            (r.fwd_bwd_tokens_per_s(), r.step_tokens_per_s()),
                            ("peak RSS", "peak_rss_mib"),
                        );
                    }
                    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
                    theirs = Some((f("fwd_bwd_tokens_per_s"), f("step_tokens_per_s")));
                }
                Err(e) => {
                    eprintln!("diagc: {e}");
                    return 2;
                }
            }
        }
        rows.push((r.fwd_bwd_tokens_per_s(), r.step_tokens_per_s(), theirs));
    }
    if rounds > 1 {
        print_rounds(&rows);
    }
    0
}

/// The CPU benchmark's report of one round.
fn print_cpu_bench(
    r: &crate::train::bench::BenchReport,
    cfg: &crate::train::model::ModelConfig,
    (jit, fuse): (bool, bool),
    top: usize,
) {
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    println!(
        "diagc (CPU, f32, {}{}) {}, {} layer(s), batch {} x {}, {} parameters, {} threads available",
        if jit { "fused JIT kernels" } else { "no JIT" },
        if fuse { ", attention fused" } else { "" },
        cfg.mech,
        cfg.layers,
        cfg.batch,
        cfg.bptt,
        r.params,
        crate::backend::cpu::exec::kernels::cores()
    );
    println!(
        "  forward+backward:         {:8.0} tokens/s",
        r.fwd_bwd_tokens_per_s()
    );
    println!(
        "  whole step (+clip, Adam): {:8.0} tokens/s",
        r.step_tokens_per_s()
    );
    println!(
        "  memory: workspace {:.0} MiB (without reuse {:.0} MiB), parameters+gradients+Adam {:.0} MiB",
        mib(r.workspace),
        mib(r.workspace_no_reuse),
        mib(r.state)
    );
    println!(
        "  clipping + Adam: {:.1} ms; one forward+backward by kernel:",
        r.update * 1e3
    );
    for (kind, secs, n) in r.profile.iter().take(8) {
        println!("    {kind:<20} {:8.1} ms  ({n} steps)", secs * 1e3);
    }
    if top > 0 {
        println!("  the {} slowest steps:", top.min(r.steps.len()));
    }
    for (label, kind, secs, flops) in r.steps.iter().take(top) {
        let rate = if *flops > 0 && *secs > 0.0 {
            format!("{:6.0} GFLOP/s", *flops as f64 / secs / 1e9)
        } else {
            String::new()
        };
        println!("    {kind:<20} {:8.2} ms {rate:>14}  {label}", secs * 1e3);
    }
}

/// One round of `bench --rounds`: diagc's tokens/s (forward+backward, whole step), and
/// PyTorch's when it ran.
type Round = (f64, f64, Option<(f64, f64)>);

/// Every round of `bench --rounds` (diagc's tokens/s, forward+backward and whole step, and
/// PyTorch's when it ran), then the median of each column and of the per-round ratios.
fn print_rounds(rows: &[Round]) {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let torch = rows.iter().all(|r| r.2.is_some());
    println!(
        "{} rounds, tokens/s (forward+backward / whole step){}:",
        rows.len(),
        if torch {
            ", diagc then PyTorch in each"
        } else {
            ""
        }
    );
    for (k, (fb, st, t)) in rows.iter().enumerate() {
        match t {
            Some((pf, ps)) => println!(
                "  round {:2}: diagc {fb:6.0} / {st:6.0}   PyTorch {pf:6.0} / {ps:6.0}   ratio {:.2}x / {:.2}x",
                k + 1,
                fb / pf,
                st / ps
            ),
            None => println!("  round {:2}: diagc {fb:6.0} / {st:6.0}", k + 1),
        }
    }
    let col = |f: &dyn Fn(&Round) -> f64| median(rows.iter().map(f).collect());
    print!(
        "  median:   diagc {:6.0} / {:6.0}",
        col(&|r| r.0),
        col(&|r| r.1)
    );
    if torch {
        let t = |r: &Round| r.2.unwrap_or((f64::NAN, f64::NAN));
        println!(
            "   PyTorch {:6.0} / {:6.0}   ratio {:.2}x / {:.2}x (median of the rounds' ratios)",
            col(&|r| t(r).0),
            col(&|r| t(r).1),
            col(&|r| r.0 / t(r).0),
            col(&|r| r.1 / t(r).1)
        );
    } else {
        println!();
    }
}

/// Runs `bench/pytorch_lm_step.py` for `cfg` with `extra` arguments; its JSON line.
fn run_pytorch(
    cfg: &crate::train::model::ModelConfig,
    steps: usize,
    extra: &[&str],
) -> Result<serde_json::Value, String> {
    let out = std::process::Command::new("python3")
        .arg("bench/pytorch_lm_step.py")
        .args(["--mech", &cfg.mech, "--layers", &cfg.layers.to_string()])
        .args([
            "--batch",
            &cfg.batch.to_string(),
            "--bptt",
            &cfg.bptt.to_string(),
        ])
        .args(["--steps", &steps.to_string(), "--json"])
        .args(extra)
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the PyTorch side failed (is torch installed?): {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        ));
    }
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    serde_json::from_str(&line)
        .map_err(|_| format!("could not read the PyTorch script's output: {line}"))
}

/// Prints PyTorch's figures from its JSON line `v` beside diagc's tokens/s `(forward+backward,
/// whole step)`, with the ratios: `label` follows the version (` eager`), `width` is the
/// figures' column width, `memory` the memory line's text and JSON key.
fn print_pytorch(
    v: &serde_json::Value,
    label: &str,
    width: usize,
    (fb, step): (f64, f64),
    (memory, key): (&str, &str),
) {
    let (pf, ps) = (
        v["fwd_bwd_tokens_per_s"].as_f64().unwrap_or(0.0),
        v["step_tokens_per_s"].as_f64().unwrap_or(0.0),
    );
    println!(
        "PyTorch {}{label} in the same run:",
        v["torch"].as_str().unwrap_or("?")
    );
    println!(
        "  forward+backward:         {pf:width$.0} tokens/s   (diagc / PyTorch = {:.2}x)",
        fb / pf
    );
    println!(
        "  whole step (+clip, Adam): {ps:width$.0} tokens/s   (diagc / PyTorch = {:.2}x)",
        step / ps
    );
    println!("  {memory}: {:.0} MiB", v[key].as_f64().unwrap_or(0.0));
}

/// `diagc bench --device cuda`: the training step on the GPU, and PyTorch's (eager and
/// torch.compile) in the same run with `--pytorch`.
fn bench_cuda(
    gpu: &crate::backend::cuda::runtime::Gpu,
    cfg: &crate::train::model::ModelConfig,
    (steps, fuse): (usize, bool),
    pytorch: bool,
    precision: PrecisionArg,
) -> i32 {
    let (step, fb, bytes) = match crate::backend::cuda::train::bench(gpu, cfg, steps, 0, fuse) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("diagc: {e}");
            return 2;
        }
    };
    let tokens = (cfg.batch * cfg.bptt) as f64;
    let tf32 = matches!(precision, PrecisionArg::Tf32);
    println!(
        "diagc (CUDA, {}, {}, one CUDA graph per step) {}, {} layer(s), batch {} x {}, on {} ({})",
        if tf32 { "TF32 products" } else { "fp32" },
        if fuse {
            "attention fused"
        } else {
            "attention not fused"
        },
        cfg.mech,
        cfg.layers,
        cfg.batch,
        cfg.bptt,
        gpu.info.name,
        gpu.info.arch()
    );
    println!("  forward+backward:         {:10.0} tokens/s", tokens / fb);
    println!(
        "  whole step (+clip, Adam): {:10.0} tokens/s",
        tokens / step
    );
    println!(
        "  device memory held (plan buffers, parameters, gradients, Adam moments): {:.0} MiB",
        bytes as f64 / (1u64 << 20) as f64
    );
    if pytorch {
        for (label, extra) in [
            ("eager", vec!["--device", "cuda"]),
            ("torch.compile", vec!["--device", "cuda", "--compile"]),
        ] {
            let mut extra = extra;
            if tf32 {
                extra.push("--tf32");
            }
            match run_pytorch(cfg, steps, &extra) {
                Ok(v) => print_pytorch(
                    &v,
                    &format!(" {label}"),
                    10,
                    (tokens / fb, tokens / step),
                    ("peak GPU memory (allocator)", "peak_gpu_mib"),
                ),
                Err(e) => eprintln!("diagc: {e}"),
            }
        }
    }
    0
}

fn train_cmd(
    cfg: crate::train::run::TrainConfig,
    data: Option<&Path>,
    out: Option<PathBuf>,
    resume: Option<PathBuf>,
    device: &str,
    jit: bool,
) -> i32 {
    use crate::train::{checkpoint, data::data_dir, run};
    if !cpu_device(device) {
        return 2;
    }
    let data_dir = data_dir(data);
    let (cfg, out, ck) = match &resume {
        Some(dir) => match checkpoint::load(dir, "last") {
            Ok(ck) => {
                let saved: run::TrainConfig =
                    match serde_json::from_value(ck.sidecar["config"].clone()) {
                        Ok(c) => c,
                        Err(e) => {
                            eprintln!(
                                "diagc: {}/last.json has no usable config: {e}",
                                dir.display()
                            );
                            return 2;
                        }
                    };
                // Only the stopping point may change on resume (`--steps`).
                let mut saved = saved;
                saved.max_steps = cfg.max_steps.or(saved.max_steps);
                (saved, dir.clone(), Some(ck))
            }
            Err(e) => {
                eprintln!("diagc: cannot resume: {e}");
                return 2;
            }
        },
        None => {
            let out = out.unwrap_or_else(|| run::default_run_dir(&cfg));
            (cfg, out, None)
        }
    };
    if let Err(e) = run::prepare_run_dir(&out, ck.is_some()) {
        eprintln!("diagc: {e}");
        return 2;
    }
    let mut trainer = match run::Trainer::new(cfg.clone(), &data_dir) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("diagc: {e}");
            return 2;
        }
    };
    trainer.plan_options.jit = jit;
    if device == "cuda" {
        match crate::backend::cuda::runtime::Gpu::open(Default::default()) {
            Ok(gpu) => {
                eprintln!(
                    "diagc: training on {} ({}); evaluation runs on the CPU",
                    gpu.info.name,
                    gpu.info.arch()
                );
                trainer.use_gpu(gpu);
            }
            Err(why) => eprintln!("diagc: --device cuda: {why}; running on the CPU"),
        }
    }
    if let Some(ck) = &ck
        && let Err(e) = trainer.restore(ck)
    {
        eprintln!("diagc: cannot resume: {e}");
        return 2;
    }
    let _ = std::fs::write(
        out.join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap_or_default(),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
    eprintln!(
        "training {} ({} layer(s), {} parameters) on {} into {}",
        cfg.model.mech,
        cfg.model.layers,
        trainer.parameter_count(),
        data_dir.display(),
        out.display()
    );
    let progress = std::io::stderr().is_terminal();
    match trainer.run(&out, &stop, progress) {
        Ok(run::Outcome::Finished {
            valid_ppl,
            test_ppl,
        }) => {
            println!("valid perplexity {:.2}", valid_ppl.unwrap_or(f64::NAN));
            println!("test perplexity {test_ppl:.2}");
            println!("summary: {}", out.join("summary.json").display());
            0
        }
        Ok(run::Outcome::Interrupted) => {
            eprintln!(
                "interrupted at step {}; continue with `diagc train --resume {}`",
                trainer.step,
                out.display()
            );
            130
        }
        Err(e) => {
            eprintln!("diagc: {e}");
            1
        }
    }
}

fn eval_cmd(run_dir: &Path, split: &str, data: Option<&Path>) -> i32 {
    use crate::train::{checkpoint, data::data_dir, run};
    let ck = match checkpoint::load(run_dir, "best") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("diagc: {e}");
            return 2;
        }
    };
    let cfg: run::TrainConfig = match serde_json::from_value(ck.sidecar["config"].clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "diagc: {}/best.json has no usable config: {e}",
                run_dir.display()
            );
            return 2;
        }
    };
    let mut t = match run::Trainer::new(cfg, &data_dir(data)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("diagc: {e}");
            return 2;
        }
    };
    if let Err(e) = t.restore(&ck) {
        eprintln!("diagc: {e}");
        return 2;
    }
    match t.perplexity(split) {
        Ok(p) => {
            println!("{split} perplexity {p:.2}");
            0
        }
        Err(e) => {
            eprintln!("diagc: {e}");
            2
        }
    }
}

/// Whether `--device` names a device (`cpu`, `cuda` or `auto`, which means the CPU); otherwise
/// says so. What `cuda` does without a GPU (run on the CPU, saying why) is the caller's.
fn cpu_device(device: &str) -> bool {
    match device {
        "cpu" | "auto" | "cuda" => true,
        other => {
            eprintln!("diagc: unknown device `{other}` (cpu, cuda or auto)");
            false
        }
    }
}

fn selftest(device: &str, quick: bool) -> i32 {
    use crate::backend::cuda::selftest as st;
    if device != "cuda" {
        eprintln!(
            "diagc: selftest checks a backend against the CPU executor; only `--device cuda` \
             exists (the CPU executor itself is checked by `cargo test`)"
        );
        return 2;
    }
    let gpu = match st::open() {
        Ok(g) => g,
        Err(why) => {
            eprintln!("diagc: selftest --device cuda: {why}; nothing to check on this machine");
            return 3;
        }
    };
    let nvrtc = crate::backend::cuda::nvrtc::load().unwrap_or("?");
    let version =
        crate::backend::cuda::nvrtc::version().map_or("?".to_string(), |(a, b)| format!("{a}.{b}"));
    println!(
        "diagc selftest: {} ({}, {:.0} GiB), NVRTC {version} from {nvrtc}",
        gpu.info.name,
        gpu.info.arch(),
        gpu.info.memory_bytes as f64 / (1u64 << 30) as f64
    );
    println!(
        "tolerances: |gpu - cpu| <= {} + {} |cpu| (LM step: {} + {} |cpu|); `worst` is the largest error / tolerance",
        st::ATOL,
        st::RTOL,
        st::LM_ATOL,
        st::LM_RTOL
    );
    let mut say = |o: &st::Outcome| match &o.error {
        Some(e) => println!("FAIL {}: {e}", o.what),
        None => println!(
            "{} {} (worst {:.3})",
            if o.passed() { "ok  " } else { "FAIL" },
            o.what,
            o.worst
        ),
    };
    let all = st::run(&gpu, quick, &mut say);
    let failed = all.iter().filter(|o| !o.passed()).count();
    println!(
        "{} checks, {} passed, {failed} failed",
        all.len(),
        all.len() - failed
    );
    i32::from(failed > 0)
}
