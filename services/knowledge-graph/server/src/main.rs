use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    souk_shared::telemetry::init();
    let args = souk_kg::KgArgs::parse();
    souk_kg::run(args, souk_shared::shutdown::signal()).await
}
