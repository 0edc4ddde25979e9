//! SDP offer/answer through the node's NegotiateSdp over gRPC, with the far end's RTP
//! on real UDP: bad SDP gets INVALID_ARGUMENT saying what is wrong (and the call goes
//! on), the node's own offer and the far end's answer set the codec it sends, and a
//! re-offer holds, resumes and switches codec with continuous numbering.

use std::net::SocketAddr;

use fleet_tests::*;
use media_node::core::codec::{AudioCodec, Decoder};
use media_node::core::g711::Codec;
use media_node::core::sdp::SessionDescription;
use media_proto::pb::negotiate_sdp_request::SdpType;
use media_proto::pb::*;
use tonic::Code;

fn offer_from(addr: SocketAddr, formats: &str, rtpmaps: &str, direction: &str) -> String {
    format!(
        "v=0\r\no=far 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {formats}\r\n{rtpmaps}a=rtpmap:101 telephone-event/8000\r\na={direction}\r\n",
        ip = addr.ip(),
        port = addr.port()
    )
}

async fn negotiate(
    node: &mut TestNode,
    port: u32,
    sdp: &str,
    kind: SdpType,
    prefer: &[&str],
) -> Result<NegotiateSdpResponse, tonic::Status> {
    node.client
        .negotiate_sdp(NegotiateSdpRequest {
            server_rtp_port: port,
            remote_sdp: sdp.into(),
            remote_type: kind as i32,
            preferred_codecs: prefer.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn bad_sdp_is_invalid_argument_saying_what_is_wrong_and_the_call_goes_on() {
    let mut node = TestNode::start(30140, 10).await;
    let (port, _, caller) = node.call("sdp-bad").await;
    let good = offer_from(caller.local_addr(), "0 101", "", "sendrecv");
    let cases: Vec<(String, &str)> = vec![
        // Binary (a gRPC string is UTF-8, so what arrives is its lossy text).
        (String::from_utf8_lossy(&[0xff, 0xfe, 0x00, 0x01]).into_owned(), "line 1: not a type=value line"),
        ("x".repeat(1 << 20), "at most 65536"),
        ("o=- 1 1 IN IP4 1.2.3.4\r\n".into(), "must start with v=0"),
        ("v=0\r\nc=IN IP4 1.2.3.4\r\n".into(), "no m= line"),
        (good.replace(&format!("c=IN IP4 {}\r\n", caller.local_addr().ip()), ""), "no c= address"),
        (good.replace("m=audio ", "m=audio 99999"), "line 6: m= port"),
        (good[..good.find("m=audio").unwrap() + 9].to_string(), "m= has no"),
        (offer_from(caller.local_addr(), "3 97", "a=rtpmap:97 iLBC/8000\r\n", "sendrecv"), "GSM/8000 (3), ILBC/8000 (97)"),
    ];
    for (sdp, says) in &cases {
        let e = negotiate(&mut node, port, sdp, SdpType::Unspecified, &[]).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{sdp:.60}: {e:?}");
        assert!(e.message().contains(says) && e.message().len() < 400, "{says:?} in {:?}", e.message());
    }
    let e = negotiate(&mut node, port, &good, SdpType::Unspecified, &["iLBC"]).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("\"iLBC\" is not a codec this node runs"), "{e:?}");
    let e = negotiate(&mut node, port, "", SdpType::Answer, &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = negotiate(&mut node, port + 2, &good, SdpType::Unspecified, &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // After all that the call negotiates and plays as usual.
    let r = negotiate(&mut node, port, &good, SdpType::Unspecified, &[]).await.unwrap();
    assert_eq!(r.media.unwrap().codec, "PCMU");
    node.write_prompt("p.wav", &synth_prompt(8000, 0.4), 8000);
    assert_eq!(node.play(port, "file://p.wav").await.unwrap().message, "finished");
    assert!(caller.take_received().iter().filter(|p| p.payload_type == 0).count() >= 18);
}

#[tokio::test]
async fn the_node_s_offer_and_the_far_end_s_answer_set_what_it_sends() {
    let mut node = TestNode::start(30150, 10).await;
    let (port, node_rtp, caller) = node.call("sdp-offer").await;
    let offer = negotiate(&mut node, port, "", SdpType::Unspecified, &["PCMA"]).await.unwrap();
    assert!(offer.media.is_none());
    let parsed = SessionDescription::parse(offer.local_sdp.as_bytes()).expect("the node's offer is SDP");
    let m = &parsed.media[0];
    assert_eq!(m.port as u32, port);
    assert_eq!(m.formats[..3], ["8", "0", "9"], "the asked order first, then the rest");
    assert!(m.formats.contains(&"101".to_string()));
    assert_eq!(parsed.connection, Some(node_rtp.ip()));
    // The far end answers PCMA, from its own address.
    // o= keeps the call's session id in every SDP the node writes for it, and raises
    // the version each time (RFC 3264 §8).
    let origin = |sdp: &str| -> (String, u64) {
        let o: Vec<&str> = sdp.lines().find(|l| l.starts_with("o=")).unwrap().split_whitespace().collect();
        (o[1].to_string(), o[2].parse().unwrap())
    };
    let again = negotiate(&mut node, port, "", SdpType::Unspecified, &["PCMA"]).await.unwrap();
    let (first, second) = (origin(&offer.local_sdp), origin(&again.local_sdp));
    assert!(first.0 == second.0 && second.1 > first.1, "{first:?} then {second:?}");
    let answer = offer_from(caller.local_addr(), "8 101", "a=rtpmap:8 PCMA/8000\r\n", "sendrecv");
    let r = negotiate(&mut node, port, &answer, SdpType::Answer, &[]).await.unwrap();
    assert!(r.local_sdp.is_empty(), "nothing to answer to an answer");
    assert_eq!(r.media.unwrap().codec, "PCMA");
    node.write_prompt("p.wav", &synth_prompt(8000, 0.4), 8000);
    node.play(port, "file://p.wav").await.unwrap();
    let got = caller.take_received();
    assert!(
        got.len() >= 18 && got.iter().all(|p| p.payload_type == 8),
        "the node sends PCMA: {:?}",
        got.iter().map(|p| p.payload_type).collect::<Vec<_>>()
    );
    // And hears PCMA from the far end.
    let listen = node.listen(port, 8000).await;
    let speech = synth_speech(8000, 1.0, 3);
    caller.send_speech(node_rtp, &speech, Codec::Pcma, 9).await.unwrap();
    sleep_ms(200).await;
    node.client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    let (frames, _) = listen.await.unwrap();
    let (c, _) = best_correlation(&speech, &pcm_of(&frames), 800);
    assert!(c > 0.95, "PCMA heard: {c:.3}");
}

#[tokio::test]
async fn a_re_offer_holds_resumes_and_switches_codec_with_continuous_numbering() {
    let mut node = TestNode::start(30160, 10).await;
    let (port, _, caller) = node.call("sdp-hold").await;
    let far = caller.local_addr();
    let pcmu = offer_from(far, "0 9 101", "a=rtpmap:9 G722/8000\r\n", "sendrecv");
    negotiate(&mut node, port, &pcmu, SdpType::Unspecified, &["PCMU"]).await.unwrap();
    node.write_prompt("long.wav", &synth_prompt(8000, 3.0), 8000);
    let mut client = node.client.clone();
    let play = tokio::spawn(async move {
        client.play_audio(PlayAudioRequest { audio_uri: "file://long.wav".into(), server_rtp_port: port, ..Default::default() }).await
    });
    sleep_ms(500).await;
    // Hold: the far end's re-INVITE says sendonly (legacy stacks: c=0.0.0.0).
    let held = negotiate(&mut node, port, &pcmu.replace("a=sendrecv", "a=sendonly"), SdpType::Unspecified, &["PCMU"]).await.unwrap();
    assert_eq!(held.media.unwrap().direction, "recvonly");
    assert!(held.local_sdp.contains("a=recvonly\r\n"), "{}", held.local_sdp);
    sleep_ms(100).await;
    let before_hold = caller.take_received();
    sleep_ms(600).await;
    assert_eq!(caller.take_received().len(), 0, "nothing is sent on hold");
    let zero = pcmu.replace(&format!("c=IN IP4 {}", far.ip()), "c=IN IP4 0.0.0.0");
    let r = negotiate(&mut node, port, &zero, SdpType::Unspecified, &["PCMU"]).await.unwrap().media.unwrap();
    assert_eq!((r.direction.as_str(), r.remote_rtp_addr.as_str()), ("recvonly", ""), "c=0.0.0.0 is hold too");
    sleep_ms(300).await;
    assert_eq!(caller.take_received().len(), 0);
    // Resume, switching to G.722 in the same re-offer.
    let resumed = negotiate(&mut node, port, &pcmu, SdpType::Unspecified, &["G722"]).await.unwrap();
    let o = |sdp: &str| sdp.lines().find(|l| l.starts_with("o=")).unwrap().split_whitespace().take(3).map(String::from).collect::<Vec<_>>();
    let (before, now) = (o(&held.local_sdp), o(&resumed.local_sdp));
    assert!(before[1] == now[1] && now[2].parse::<u64>().unwrap() > before[2].parse().unwrap(), "answers' o=: {before:?} then {now:?}");
    let r = resumed.media.unwrap();
    assert_eq!((r.codec.as_str(), r.direction.as_str()), ("G722", "sendrecv"));
    let m = node.metrics().await;
    assert_eq!(metric_value(&m, "media_calls_by_codec{codec=\"G722\"}"), 1.0, "the call is counted under its new codec");
    assert_eq!(metric_value(&m, "media_calls_by_codec{codec=\"PCMU\"}"), 0.0);
    let reply = play.await.unwrap().unwrap().into_inner();
    assert_eq!(reply.message, "finished");
    let after = caller.take_received();
    assert!(after.len() >= 20 && after.iter().all(|p| p.payload_type == 9), "{} packets after the resume", after.len());
    assert!(after[0].marker, "the resume starts a talkspurt");
    let seq: Vec<u16> = after.iter().map(|p| p.sequence).collect();
    assert!(seq.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "{seq:?}");
    // The hold's time shows in the timestamps, not in the sequence numbers.
    let last = before_hold.last().expect("packets before the hold");
    assert!(before_hold.len() >= 20, "{} packets before the hold", before_hold.len());
    assert_eq!(after[0].sequence, last.sequence.wrapping_add(1), "sequence numbers wait through the hold");
    let gap = after[0].timestamp.wrapping_sub(last.timestamp);
    assert!((8000..16000).contains(&gap), "the timestamp jumped by the hold's {gap} samples");
    let mut dec = Decoder::new(AudioCodec::G722);
    let mut pcm = Vec::new();
    for p in &after {
        dec.decode(&p.payload, &mut pcm);
    }
    assert!(pcm[400..].iter().any(|&s| s.abs() > 1000), "G.722 carries the prompt");
    node.client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    assert_eq!(metric_value(&node.metrics().await, "media_calls_by_codec"), 0.0, "no call counted once it ended");
}

/// The far end's ptime sets the node's packets, over real UDP: 40 ms packets of 320
/// PCMU bytes every 40 ms that carry the prompt, then a re-offer asking 10 ms, and
/// G.729 at 30 ms.
#[tokio::test]
async fn packets_follow_the_far_ends_ptime_and_a_re_offer_changes_it() {
    let mut node = TestNode::start(30460, 10).await;
    let (port, _, caller) = node.call("sdp-ptime").await;
    let far = caller.local_addr();
    let pcmu = offer_from(far, "0 18 101", "a=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\na=ptime:40\r\n", "sendrecv");
    let r = negotiate(&mut node, port, &pcmu, SdpType::Unspecified, &["PCMU"]).await.unwrap();
    assert!(r.local_sdp.contains("a=ptime:20\r\n"), "the node still asks 20 ms for itself: {}", r.local_sdp);
    let prompt = synth_prompt(8000, 2.0);
    node.write_prompt("two.wav", &prompt, 8000);
    let play = |node: &mut TestNode| {
        let mut client = node.client.clone();
        async move {
            client
                .play_audio(PlayAudioRequest { audio_uri: "file://two.wav".into(), server_rtp_port: port, ..Default::default() })
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert_eq!(play(&mut node).await.message, "finished");
    sleep_ms(100).await;
    let got = caller.take_received();
    assert_eq!(got.len(), 50, "2 s in 40 ms packets");
    assert!(got.iter().all(|p| p.payload.len() == 320), "320 bytes of PCMU each");
    assert!(got.windows(2).all(|w| w[1].timestamp.wrapping_sub(w[0].timestamp) == 320));
    let median_gap = |got: &[media_tools::caller::ReceivedPacket]| {
        let mut gaps: Vec<f64> = got.windows(2).map(|w| (w[1].at - w[0].at).as_secs_f64() * 1000.0).collect();
        gaps.sort_by(|a, b| a.partial_cmp(b).unwrap());
        gaps[gaps.len() / 2]
    };
    let median = median_gap(&got);
    println!("40 ms packets: median gap {median:.2} ms");
    assert!((35.0..45.0).contains(&median), "one packet every 40 ms: median gap {median:.1} ms");
    let pcm: Vec<i16> = got.iter().flat_map(|p| p.pcm.iter().copied()).collect();
    let (c, _) = best_correlation(&prompt[..12000], &pcm, 800);
    assert!(c > 0.95, "the prompt in 40 ms packets: correlation {c:.3}");

    // A re-INVITE asking 10 ms: two packets a frame, numbering running on.
    let last = got.last().unwrap().sequence;
    negotiate(&mut node, port, &pcmu.replace("ptime:40", "ptime:10"), SdpType::Unspecified, &["PCMU"]).await.unwrap();
    assert_eq!(play(&mut node).await.message, "finished");
    sleep_ms(100).await;
    let got = caller.take_received();
    assert_eq!(got.len(), 200, "2 s in 10 ms packets");
    assert_eq!(got[0].sequence, last.wrapping_add(1));
    assert!(got.iter().all(|p| p.payload.len() == 80));
    assert!(got.windows(2).all(|w| w[1].timestamp.wrapping_sub(w[0].timestamp) == 80));
    let median = median_gap(&got);
    println!("10 ms packets: median gap {median:.2} ms");
    assert!((7.0..13.0).contains(&median), "one packet every 10 ms, not two every 20: median gap {median:.1} ms");

    // G.729 at 30 ms: three 10-byte frames a packet.
    negotiate(&mut node, port, &pcmu.replace("ptime:40", "ptime:30"), SdpType::Unspecified, &["G729"]).await.unwrap();
    assert_eq!(play(&mut node).await.message, "finished");
    sleep_ms(100).await;
    let got = caller.take_received();
    assert!(got.iter().all(|p| p.payload_type == 18));
    assert_eq!(got.len(), 67, "66 packets of 30 ms and the last 20 ms");
    assert!(got[..66].iter().all(|p| p.payload.len() == 30) && got[66].payload.len() == 20);
    let median = median_gap(&got);
    println!("30 ms packets: median gap {median:.2} ms");
    assert!((26.0..34.0).contains(&median), "one packet every 30 ms: median gap {median:.1} ms");
    let mut dec = Decoder::new(AudioCodec::G729);
    let mut pcm = Vec::new();
    for p in &got {
        dec.decode(&p.payload, &mut pcm);
    }
    let (c, _) = best_correlation(&prompt[..12000], &pcm, 800);
    assert!(c > 0.6, "G.729 in 30 ms packets carries the prompt: {c:.3}");
}
