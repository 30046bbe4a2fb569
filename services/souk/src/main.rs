use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    souk_shared::telemetry::init();
    match souk::run(souk::Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
