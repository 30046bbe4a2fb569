use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = soukctl::Cli::parse();
    match soukctl::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
