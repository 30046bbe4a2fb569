use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = souk_encoder::EncoderArgs::parse();
    if args.inference_workers > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // Each worker's matrix products on one thread: the workers are the parallelism.
        // SAFETY: no other thread exists yet (the runtime is built below).
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", "1");
        }
    }
    souk_shared::telemetry::init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(souk_encoder::run(args, souk_shared::shutdown::signal()))
}
