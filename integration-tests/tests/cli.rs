//! The servers' command lines, as the Helm chart and operators pass them: every flag is read
//! without panicking (clap checks a field's type against its parser only when the field is
//! read, so a mismatch builds and shows in `--help` but stops the server at start).

#[test]
fn every_server_flag_parses_without_panicking() {
    souk_testkit::every_flag_reads::<souk_encoder::EncoderArgs>("souk-encoder", &[]);
    souk_testkit::every_flag_reads::<souk_kg::KgArgs>("souk-kg", &[]);
    souk_testkit::every_flag_reads::<souk_ranker::RankerArgs>("souk-ranker", &[]);
}
