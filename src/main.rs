fn main() {
    std::process::exit(diagc::cli::main());
}
