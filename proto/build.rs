// Compiles the contract with protox (pure Rust), so a fresh machine needs no
// system protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/sentiric/media/v1/media.proto", "proto/sentiric/event/v1/events.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Listener frames are handed over without a copy.
        .bytes(".sentiric.media.v1.RecordAudioResponse.audio_data")
        .compile_fds(fds)?;
    Ok(())
}
