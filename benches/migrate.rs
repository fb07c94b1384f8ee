//! `cargo bench`: the migration benchmark (see BENCHMARKS.md).
//!
//! Sizes come from `ONEWAY_BENCH_SIZES` (comma-separated, default
//! `20000,200000,1000000`), runs per size from `ONEWAY_BENCH_RUNS`
//! (default 3); the table of medians is printed as markdown.

fn main() {
    let sizes: Vec<u64> = std::env::var("ONEWAY_BENCH_SIZES")
        .unwrap_or_else(|_| "20000,200000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runs: usize = std::env::var("ONEWAY_BENCH_RUNS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(oneway::bench::DEFAULT_RUNS);
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_oneway"));
    println!("{}", oneway::bench::MARKDOWN_HEADER);
    let result = oneway::bench::run(
        &exe,
        None,
        &sizes,
        oneway::DEFAULT_BATCH_SIZE,
        runs,
        |row| {
            println!("{}", oneway::bench::markdown_row(row));
        },
    );
    if let Err(e) = result {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}
