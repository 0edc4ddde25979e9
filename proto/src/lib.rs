//! The `sentiric.media.v1` contract that the platform's callers speak.
//! Generated once here and imported everywhere else; nothing redefines it.

pub mod media {
    pub mod v1 {
        tonic::include_proto!("sentiric.media.v1");
    }
}

pub mod event {
    pub mod v1 {
        tonic::include_proto!("sentiric.event.v1");
    }
}

pub use event::v1 as events;
pub use media::v1 as pb;
