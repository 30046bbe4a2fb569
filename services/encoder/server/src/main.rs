use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    souk_shared::telemetry::init();
    let args = souk_encoder::EncoderArgs::parse();
    souk_encoder::run(args, souk_shared::shutdown::signal()).await
}
