use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = soukctl::Cli::parse();
    match soukctl::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // `print_ranking` and friends return the write error: a closed pipe is no failure.
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                soukctl::exit_on_closed_pipe(io);
            }
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
