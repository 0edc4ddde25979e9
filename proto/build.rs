// Compiles the contract with protox (pure Rust), so a fresh machine needs no
// system protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/sentiric/media/v1/media.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Listener frames are handed over without a copy.
        .bytes(".sentiric.media.v1.RecordAudioResponse.audio_data")
        .compile_fds(fds)?;
    Ok(())
}
