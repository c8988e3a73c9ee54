//! The `weir` binary; everything lives in the library.

/// mimalloc: the request path allocates and frees small objects at a high rate,
/// where it spends about half the time glibc's allocator does.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    weir::cli::main()
}
