//! What a measured video must be: reference videos (mp4/mov, 2–30 s, ≤ 100 MB) and results.

use super::{Measured, ProbeError, VideoInfo};

/// Reference videos per request.
pub const MAX_REFERENCES: usize = 3;
pub const MIN_REFERENCE_MS: u64 = 2_000;
pub const MAX_REFERENCE_MS: u64 = 30_000;
/// 100 MB means 100,000,000 bytes everywhere.
pub const MAX_REFERENCE_BYTES: u64 = 100_000_000;

/// Refuses a reference video by its size alone (known before the walk starts).
pub(crate) fn check_reference_size(size: u64) -> Result<(), ProbeError> {
    if size > MAX_REFERENCE_BYTES {
        return Err(ProbeError::Invalid(format!(
            "{size} bytes, limit {MAX_REFERENCE_BYTES}"
        )));
    }
    Ok(())
}

/// A reference video: a video track, 2–30 s, at most 100 MB when the size is known.
pub(crate) fn reference(measured: &Measured) -> Result<VideoInfo, ProbeError> {
    if let Some(size) = measured.size {
        check_reference_size(size)?;
    }
    if !measured.movie.has_video {
        return Err(ProbeError::Invalid("no video track".into()));
    }
    let ms = measured.movie.duration_ms;
    if ms == 0 {
        return Err(ProbeError::Invalid("no duration in the video header".into()));
    }
    if ms < MIN_REFERENCE_MS {
        return Err(ProbeError::Invalid(format!(
            "{}, minimum {}",
            seconds(ms),
            seconds(MIN_REFERENCE_MS)
        )));
    }
    if ms > MAX_REFERENCE_MS {
        return Err(ProbeError::Invalid(format!(
            "{}, limit {}",
            seconds(ms),
            seconds(MAX_REFERENCE_MS)
        )));
    }
    Ok(measured.info())
}

/// A generated video: any positive duration.
pub(crate) fn result(measured: &Measured) -> Result<VideoInfo, ProbeError> {
    if measured.movie.duration_ms == 0 {
        return Err(ProbeError::Invalid("no duration in the video header".into()));
    }
    Ok(measured.info())
}

/// `31200` → "31.2 s", `31000` → "31 s", `30001` → "30.001 s".
fn seconds(ms: u64) -> String {
    let (whole, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        format!("{whole} s")
    } else {
        let frac = format!("{frac:03}");
        format!("{whole}.{} s", frac.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Container;
    use crate::probe::boxes::Movie;

    fn measured(ms: u64, size: Option<u64>) -> Measured {
        Measured {
            movie: Movie {
                container: Container::Mov,
                duration_ms: ms,
                has_audio: true,
                has_video: true,
            },
            size,
        }
    }

    fn message(result: Result<VideoInfo, ProbeError>) -> String {
        result.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn seconds_read_naturally() {
        assert_eq!(seconds(31_200), "31.2 s");
        assert_eq!(seconds(31_000), "31 s");
        assert_eq!(seconds(30_001), "30.001 s");
        assert_eq!(seconds(1_050), "1.05 s");
    }

    #[test]
    fn reference_limits_say_what_was_found() {
        assert_eq!(message(reference(&measured(31_200, None))), "31.2 s, limit 30 s");
        assert_eq!(message(reference(&measured(1_500, None))), "1.5 s, minimum 2 s");
        assert_eq!(
            message(reference(&measured(5_000, Some(104_857_600)))),
            "104857600 bytes, limit 100000000"
        );
        assert!(reference(&measured(2_000, Some(100_000_000))).is_ok());
        assert!(reference(&measured(30_000, None)).is_ok());
        assert!(reference(&measured(0, None)).is_err());
    }

    #[test]
    fn results_need_only_a_duration() {
        assert!(result(&measured(45_000, Some(500_000_000))).is_ok());
        assert!(result(&measured(0, None)).is_err());
    }
}
