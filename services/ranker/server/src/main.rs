use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    souk_shared::telemetry::init();
    let args = souk_ranker::RankerArgs::parse();
    souk_ranker::run(args, souk_shared::shutdown::signal()).await
}
