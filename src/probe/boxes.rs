//! Pure ISO-BMFF (mp4/mov) box walker over range reads: container, duration, tracks; never panics.
//!
//! Why our own walker and not `mp4parse`: `mp4parse` reads its input sequentially and cannot
//! seek, so a file with `moov` at the end would have to be downloaded whole, `mdat` included,
//! before its duration is known. This walker is sans-IO instead: [`Walker::step`] looks at a
//! window of bytes and either finishes or says which byte range it needs next, so the caller
//! fetches exactly the box headers, the `moov` (wherever it is) and, for fragmented files
//! without `mehd`, the `moof` boxes, and skips `mdat` by its size.
//!
//! Hostile input is expected: every size is checked against what encloses it, arithmetic is
//! checked, descent follows a fixed path (`moov/trak/mdia`, `moov/mvex`, `moof/traf`), so
//! recursion depth is bounded by construction, and every box advances the position by at
//! least its header, so no loop can stall.

use crate::billing::media_duration_ms;
use crate::probe::Container;

/// Largest header: 32-bit size, type, 64-bit largesize.
pub const MAX_HEADER: u64 = 16;
/// An `ftyp` is a few brands; anything bigger is not a real one.
const MAX_FTYP: u64 = 4096;
/// More tracks than any real video has; bounds memory on hostile input.
const MAX_TRACKS: usize = 64;

/// Why a file is not a measurable mp4/mov.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoxError {
    /// Recognisably another format (webm, avi, an HTML page, another ISO-BMFF brand...).
    #[error("container is {0}, expected mp4 or mov")]
    OtherContainer(String),
    /// ISO-BMFF that cannot be read: truncated, inconsistent sizes, zero timescale...
    #[error("malformed mp4/mov: {0}")]
    Malformed(String),
}

fn malformed(message: impl Into<String>) -> BoxError {
    BoxError::Malformed(message.into())
}

/// What the walker found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movie {
    pub container: Container,
    /// `round_half_up(duration × 1000 / timescale)`; 0 when the file declares no duration.
    pub duration_ms: u64,
    pub has_audio: bool,
    pub has_video: bool,
}

/// Bytes of the file the caller holds: `data` starts at `offset`; `at_eof` when `data` runs
/// to the end of the file; `file_size` when the server told it.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    pub offset: u64,
    pub data: &'a [u8],
    pub at_eof: bool,
    pub file_size: Option<u64>,
}

impl<'a> Window<'a> {
    fn end(&self) -> u64 {
        self.offset.saturating_add(self.data.len() as u64)
    }

    /// The bytes from `pos` to the window's end, when `pos` lies inside it (or at its end).
    fn bytes_from(&self, pos: u64) -> Option<&'a [u8]> {
        let start = usize::try_from(pos.checked_sub(self.offset)?).ok()?;
        self.data.get(start..)
    }

    /// Exactly `[start, end)`, when the window holds all of it.
    fn range(&self, start: u64, end: u64) -> Option<&'a [u8]> {
        let len = usize::try_from(end.checked_sub(start)?).ok()?;
        self.bytes_from(start)?.get(..len)
    }
}

/// What the walker wants next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Bytes `[offset, offset + len)` (`len` may be `u64::MAX`: "to the end of the file").
    /// The caller may return more, or fewer when the file ends first (then `at_eof`).
    Need {
        offset: u64,
        len: u64,
    },
    Done(Movie),
}

/// One box header as read from the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    kind: [u8; 4],
    header_len: u64,
    /// `None`: size 0, the box runs to the end of what encloses it.
    size: Option<u64>,
}

/// Reads a header at the start of `buf`: `Ok(None)` when `buf` is too short to tell.
fn parse_header(buf: &[u8]) -> Result<Option<Header>, BoxError> {
    let (Some(size), Some(kind)) = (be_u32(buf, 0), fourcc(buf, 4)) else {
        return Ok(None);
    };
    match size {
        0 => Ok(Some(Header {
            kind,
            header_len: 8,
            size: None,
        })),
        1 => {
            let Some(large) = be_u64(buf, 8) else {
                return Ok(None);
            };
            if large < 16 {
                return Err(malformed(format!(
                    "box '{}' has 64-bit size {large}, smaller than its header",
                    show(kind)
                )));
            }
            Ok(Some(Header {
                kind,
                header_len: 16,
                size: Some(large),
            }))
        }
        2..=7 => Err(malformed(format!(
            "box '{}' has size {size}, smaller than its header",
            show(kind)
        ))),
        _ => Ok(Some(Header {
            kind,
            header_len: 8,
            size: Some(u64::from(size)),
        })),
    }
}

/// Where the top-level walk stands.
#[derive(Debug, Default)]
pub struct Walker {
    pos: u64,
    file_size: Option<u64>,
    container: Option<Container>,
    moov: Option<Moov>,
    /// The last `Need`, to turn a caller that cannot supply it into an error, not a loop.
    last_need: Option<(u64, u64)>,
}

impl Walker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Walks the top-level boxes as far as `window` allows.
    pub fn step(&mut self, window: &Window<'_>) -> Result<Step, BoxError> {
        if let Some(size) = window.file_size {
            self.file_size = Some(size);
        } else if window.at_eof && self.file_size.is_none() {
            // A stream that ended told the size even though no header did.
            self.file_size = Some(window.end());
        }
        loop {
            if let Some(movie) = self.finished_early()? {
                return Ok(Step::Done(movie));
            }
            if self.file_size.is_some_and(|size| self.pos >= size) {
                return self.finish_at_eof().map(Step::Done);
            }
            let Some(avail) = window.bytes_from(self.pos) else {
                return self.need(self.pos, MAX_HEADER);
            };
            let parsed = parse_header(avail);
            if self.pos == 0 {
                let plausible = matches!(&parsed, Ok(Some(h)) if starts_iso_file(h.kind));
                let undecided = matches!(parsed, Ok(None)) && !window.at_eof;
                if !plausible && !undecided {
                    let name = sniff_other(avail).unwrap_or("not recognised (no ftyp box)");
                    return Err(BoxError::OtherContainer(name.into()));
                }
            }
            let header = match parsed? {
                Some(header) => header,
                None if window.at_eof && avail.is_empty() => {
                    return self.finish_at_eof().map(Step::Done);
                }
                None if window.at_eof => {
                    return Err(malformed(format!(
                        "file ends inside a box header at offset {}",
                        self.pos
                    )));
                }
                None => return self.need(self.pos, MAX_HEADER),
            };
            let end = match header.size {
                Some(size) => Some(
                    self.pos
                        .checked_add(size)
                        .ok_or_else(|| malformed(format!("box '{}' size overflows", show(header.kind))))?,
                ),
                None => self.file_size.or_else(|| window.at_eof.then(|| window.end())),
            };
            if let (Some(end), Some(size)) = (end, self.file_size)
                && end > size
            {
                return Err(malformed(format!(
                    "box '{}' at offset {} ends at {end}, past the end of the file ({size} bytes)",
                    show(header.kind),
                    self.pos
                )));
            }
            if let Some(step) = self.visit(header, end, window)? {
                return Ok(step);
            }
        }
    }

    /// Handles the box at `self.pos`; `Some(step)` when the walk must pause or ends.
    fn visit(&mut self, header: Header, end: Option<u64>, window: &Window<'_>) -> Result<Option<Step>, BoxError> {
        let wanted = match &header.kind {
            b"ftyp" => self.container.is_none(),
            b"moov" => self.moov.is_none(),
            // Fragments only matter when mvex promised them and mehd gave no total.
            b"moof" => self.moov.as_ref().is_some_and(|m| m.needs_fragments()),
            _ => false,
        };
        if self.pos == 0 && header.kind != *b"ftyp" {
            // QuickTime files from before `ftyp` existed start straight with other boxes.
            self.container = Some(Container::Mov);
        }
        let Some(end) = end else {
            if wanted {
                // Size 0 with the file size unknown: the box runs to the end of the file.
                return self.need(self.pos, u64::MAX).map(Some);
            }
            // Anything else running to the end of the file ends the walk.
            return self.finish_at_eof().map(|movie| Some(Step::Done(movie)));
        };
        if wanted {
            if header.kind == *b"ftyp" && end - self.pos > MAX_FTYP {
                return Err(malformed(format!("ftyp of {} bytes", end - self.pos)));
            }
            let Some(bytes) = window.range(self.pos, end) else {
                if window.at_eof && window.bytes_from(self.pos).is_some() {
                    return Err(malformed(format!(
                        "box '{}' at offset {} runs past the end of the file",
                        show(header.kind),
                        self.pos
                    )));
                }
                return self.need(self.pos, end - self.pos).map(Some);
            };
            let body = bytes.get(to_usize(header.header_len)?..).unwrap_or_default();
            match &header.kind {
                b"ftyp" => self.container = Some(parse_ftyp(body)?),
                b"moov" => self.moov = Some(Moov::parse(body)?),
                _ => {
                    if let Some(moov) = self.moov.as_mut() {
                        moov.add_fragment(body)?;
                    }
                }
            }
        }
        self.pos = end;
        Ok(None)
    }

    fn need(&mut self, offset: u64, len: u64) -> Result<Step, BoxError> {
        if self.last_need == Some((offset, len)) {
            return Err(malformed(format!("bytes at offset {offset} could not be read")));
        }
        self.last_need = Some((offset, len));
        Ok(Step::Need { offset, len })
    }

    /// Done before the end of the file: a plain movie, or fragments whose total `mehd` gave.
    fn finished_early(&self) -> Result<Option<Movie>, BoxError> {
        match (&self.container, &self.moov) {
            (Some(container), Some(moov)) if !moov.needs_fragments() => moov.movie(*container).map(Some),
            _ => Ok(None),
        }
    }

    fn finish_at_eof(&self) -> Result<Movie, BoxError> {
        match (&self.container, &self.moov) {
            (Some(container), Some(moov)) => moov.movie(*container),
            (None, _) => Err(malformed("empty file")),
            (Some(_), None) => Err(malformed("no moov box")),
        }
    }
}

/// A file starts with `ftyp`, or (QuickTime from before `ftyp` existed) one of these.
fn starts_iso_file(kind: [u8; 4]) -> bool {
    matches!(&kind, b"ftyp" | b"moov" | b"mdat" | b"wide" | b"free" | b"skip")
}

/// Mp4 brands: ISO base media, MPEG-4, AVC/HEVC, DASH/CMAF, Apple's M4V/M4A, Flash's f4v.
const MP4_BRANDS: &[&[u8; 4]] = &[
    b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso7", b"iso8", b"iso9", b"mp41", b"mp42", b"mp71",
    b"avc1", b"avc2", b"hvc1", b"hev1", b"av01", b"dash", b"msdh", b"msix", b"cmfc", b"cmf2", b"M4V ", b"M4VH",
    b"M4VP", b"M4A ", b"M4B ", b"mmp4", b"f4v ", b"MSNV", b"XAVC", b"NDAS",
];

/// Container from the major brand, else from the compatible brands.
fn parse_ftyp(body: &[u8]) -> Result<Container, BoxError> {
    let major = fourcc(body, 0).ok_or_else(|| malformed("ftyp shorter than its major brand"))?;
    let compatible: Vec<[u8; 4]> = body
        .get(8..)
        .unwrap_or_default()
        .chunks_exact(4)
        .filter_map(|c| fourcc(c, 0))
        .collect();
    let brand_container = |brand: &[u8; 4]| match brand {
        b"qt  " => Some(Container::Mov),
        b if MP4_BRANDS.contains(&b) => Some(Container::Mp4),
        _ => None,
    };
    if let Some(container) = brand_container(&major) {
        return Ok(container);
    }
    if let Some(container) = compatible.iter().find_map(brand_container) {
        return Ok(container);
    }
    let name = match &major {
        b"heic" | b"heix" | b"mif1" | b"msf1" | b"heis" => "heif".to_string(),
        b"avif" | b"avis" => "avif".to_string(),
        b"crx " => "cr3".to_string(),
        b"jp2 " => "jpeg 2000".to_string(),
        [b'3', b'g', ..] => "3gp".to_string(),
        _ => format!("ISO-BMFF with brand '{}'", show(major)),
    };
    Err(BoxError::OtherContainer(name))
}

/// Names formats that are recognisably not ISO-BMFF, for a useful error message.
fn sniff_other(data: &[u8]) -> Option<&'static str> {
    let starts = |magic: &[u8]| data.starts_with(magic);
    let head = data.get(..data.len().min(64)).unwrap_or_default();
    let contains = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    if starts(&[0x1a, 0x45, 0xdf, 0xa3]) {
        return Some(if contains(b"webm") { "webm" } else { "matroska" });
    }
    if starts(b"RIFF") {
        return Some(match data.get(8..12) {
            Some(b"AVI ") => "avi",
            Some(b"WAVE") => "wav",
            Some(b"WEBP") => "webp",
            _ => "riff",
        });
    }
    let table: &[(&[u8], &str)] = &[
        (b"OggS", "ogg"),
        (b"FLV", "flv"),
        (b"ID3", "mp3"),
        (b"fLaC", "flac"),
        (b"GIF8", "gif"),
        (&[0x89, b'P', b'N', b'G'], "png"),
        (&[0xff, 0xd8, 0xff], "jpeg"),
        (&[0, 0, 1, 0xba], "mpeg-ps"),
        (b"%PDF", "pdf"),
        (b"{", "json"),
        (b"<", "html"),
    ];
    if let Some((_, name)) = table.iter().find(|(magic, _)| starts(magic)) {
        return Some(name);
    }
    let ts_sync = data.first() == Some(&0x47) && data.get(188).is_none_or(|b| *b == 0x47);
    ts_sync.then_some("mpeg-ts")
}

/// What `moov` says, plus fragment durations added as `moof` boxes go by.
#[derive(Debug, Default)]
struct Moov {
    timescale: u32,
    duration: u64,
    saw_mvhd: bool,
    /// `mvex` present: samples may follow in `moof` boxes.
    fragmented: bool,
    /// `mehd` fragment_duration, in the movie timescale.
    fragment_duration: Option<u64>,
    tracks: Vec<Track>,
    /// `trex` default sample durations by track id.
    trex: Vec<(u32, u32)>,
}

#[derive(Debug, Default, Clone)]
struct Track {
    id: u32,
    handler: [u8; 4],
    /// `tkhd` duration, in the movie timescale.
    header_duration: u64,
    media_timescale: u32,
    media_duration: u64,
    /// Sum of `trun` sample durations, in the media timescale.
    fragment_duration: u64,
}

impl Moov {
    fn parse(body: &[u8]) -> Result<Self, BoxError> {
        let mut moov = Moov::default();
        for child in Children::new(body) {
            let (kind, body) = child?;
            match &kind {
                b"mvhd" if !moov.saw_mvhd => {
                    let (timescale, duration) = parse_mvhd(body)?;
                    moov.timescale = timescale;
                    moov.duration = duration;
                    moov.saw_mvhd = true;
                }
                b"trak" => {
                    if moov.tracks.len() >= MAX_TRACKS {
                        return Err(malformed(format!("more than {MAX_TRACKS} tracks")));
                    }
                    moov.tracks.push(parse_trak(body)?);
                }
                b"mvex" => moov.parse_mvex(body)?,
                _ => {}
            }
        }
        if !moov.saw_mvhd {
            return Err(malformed("moov has no mvhd"));
        }
        if moov.timescale == 0 {
            return Err(malformed("mvhd timescale is 0"));
        }
        Ok(moov)
    }

    fn parse_mvex(&mut self, body: &[u8]) -> Result<(), BoxError> {
        self.fragmented = true;
        for child in Children::new(body) {
            let (kind, body) = child?;
            match &kind {
                b"mehd" => {
                    let version = *body.first().ok_or_else(|| malformed("empty mehd"))?;
                    let duration = if version == 1 {
                        be_u64(body, 4)
                    } else {
                        be_u32(body, 4).map(u64::from)
                    };
                    let duration = duration.ok_or_else(|| malformed("truncated mehd"))?;
                    self.fragment_duration = (duration > 0).then_some(duration);
                }
                b"trex" => {
                    let (Some(track_id), Some(default_duration)) = (be_u32(body, 4), be_u32(body, 12)) else {
                        return Err(malformed("truncated trex"));
                    };
                    if self.trex.len() < MAX_TRACKS {
                        self.trex.push((track_id, default_duration));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn needs_fragments(&self) -> bool {
        self.fragmented && self.fragment_duration.is_none()
    }

    /// Adds the sample durations of one `moof` to its tracks.
    fn add_fragment(&mut self, moof: &[u8]) -> Result<(), BoxError> {
        for child in Children::new(moof) {
            let (kind, body) = child?;
            if kind == *b"traf" {
                self.add_traf(body)?;
            }
        }
        Ok(())
    }

    fn add_traf(&mut self, traf: &[u8]) -> Result<(), BoxError> {
        let mut track: Option<(u32, u32)> = None; // (track id, default sample duration)
        for child in Children::new(traf) {
            let (kind, body) = child?;
            match &kind {
                b"tfhd" => {
                    let (id, default) = parse_tfhd(body)?;
                    let trex_default = self
                        .trex
                        .iter()
                        .find(|(trex_id, _)| *trex_id == id)
                        .map_or(0, |(_, d)| *d);
                    track = Some((id, default.unwrap_or(trex_default)));
                }
                b"trun" => {
                    let (id, default) = track.ok_or_else(|| malformed("trun before tfhd in traf"))?;
                    let sum = trun_duration(body, default)?;
                    let Some(track) = self.tracks.iter_mut().find(|t| t.id == id) else {
                        return Err(malformed(format!("fragment for unknown track {id}")));
                    };
                    track.fragment_duration = track
                        .fragment_duration
                        .checked_add(sum)
                        .ok_or_else(|| malformed("fragment durations overflow"))?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn movie(&self, container: Container) -> Result<Movie, BoxError> {
        let has = |handler: &[u8; 4]| self.tracks.iter().any(|t| t.handler == *handler);
        Ok(Movie {
            container,
            duration_ms: self.duration_ms()?,
            has_audio: has(b"soun"),
            has_video: has(b"vide"),
        })
    }

    /// `mehd` when fragmented and present; else `mvhd`, unless it is 0 or (fragmented) the
    /// tracks with their fragments run longer; then the longest track.
    fn duration_ms(&self) -> Result<u64, BoxError> {
        let movie_ms = |d: u64| media_duration_ms(d, self.timescale).ok_or_else(|| malformed("mvhd timescale is 0"));
        if let Some(total) = self.fragment_duration {
            return movie_ms(total);
        }
        let declared = movie_ms(self.duration)?;
        if self.duration > 0 && !self.fragmented {
            return Ok(declared);
        }
        let mut longest = declared;
        for track in &self.tracks {
            longest = longest.max(movie_ms(track.header_duration)?);
            let media = track
                .media_duration
                .checked_add(track.fragment_duration)
                .ok_or_else(|| malformed("track duration overflows"))?;
            if media > 0 {
                let ms = media_duration_ms(media, track.media_timescale)
                    .ok_or_else(|| malformed(format!("mdhd timescale of track {} is 0", track.id)))?;
                longest = longest.max(ms);
            }
        }
        Ok(longest)
    }
}

/// `(timescale, duration)`; an all-ones duration means "unknown", read as 0.
fn parse_mvhd(body: &[u8]) -> Result<(u32, u64), BoxError> {
    let version = *body.first().ok_or_else(|| malformed("empty mvhd"))?;
    let parsed = if version == 1 {
        be_u32(body, 20).zip(be_u64(body, 24).map(known))
    } else {
        be_u32(body, 12).zip(be_u32(body, 16).map(known32))
    };
    parsed.ok_or_else(|| malformed("truncated mvhd"))
}

fn parse_trak(body: &[u8]) -> Result<Track, BoxError> {
    let mut track = Track::default();
    for child in Children::new(body) {
        let (kind, body) = child?;
        match &kind {
            b"tkhd" => {
                let version = *body.first().ok_or_else(|| malformed("empty tkhd"))?;
                let parsed = if version == 1 {
                    be_u32(body, 20).zip(be_u64(body, 28).map(known))
                } else {
                    be_u32(body, 12).zip(be_u32(body, 20).map(known32))
                };
                (track.id, track.header_duration) = parsed.ok_or_else(|| malformed("truncated tkhd"))?;
            }
            b"mdia" => parse_mdia(body, &mut track)?,
            _ => {}
        }
    }
    Ok(track)
}

fn parse_mdia(body: &[u8], track: &mut Track) -> Result<(), BoxError> {
    for child in Children::new(body) {
        let (kind, body) = child?;
        match &kind {
            b"mdhd" => {
                // Same layout as mvhd up to the duration.
                (track.media_timescale, track.media_duration) =
                    parse_mvhd(body).map_err(|_| malformed("truncated mdhd"))?;
            }
            // version/flags, pre_defined (QuickTime: component type), then the handler type.
            b"hdlr" => track.handler = fourcc(body, 8).ok_or_else(|| malformed("truncated hdlr"))?,
            _ => {}
        }
    }
    Ok(())
}

/// `(track id, default sample duration if the tfhd carries one)`.
fn parse_tfhd(body: &[u8]) -> Result<(u32, Option<u32>), BoxError> {
    let flags = be_u32(body, 0).ok_or_else(|| malformed("truncated tfhd"))? & 0x00ff_ffff;
    let id = be_u32(body, 4).ok_or_else(|| malformed("truncated tfhd"))?;
    if flags & 0x08 == 0 {
        return Ok((id, None));
    }
    // Optional fields before default-sample-duration: base-data-offset (0x01, 8 bytes) and
    // sample-description-index (0x02, 4 bytes).
    let mut at = 8;
    if flags & 0x01 != 0 {
        at += 8;
    }
    if flags & 0x02 != 0 {
        at += 4;
    }
    let duration = be_u32(body, at).ok_or_else(|| malformed("truncated tfhd"))?;
    Ok((id, Some(duration)))
}

/// Sum of one `trun`'s sample durations: per sample when flag 0x100 says so, else the default.
fn trun_duration(body: &[u8], default_duration: u32) -> Result<u64, BoxError> {
    let truncated = || malformed("truncated trun");
    let flags = be_u32(body, 0).ok_or_else(truncated)? & 0x00ff_ffff;
    let count = u64::from(be_u32(body, 4).ok_or_else(truncated)?);
    let mut at: usize = 8;
    if flags & 0x01 != 0 {
        at += 4; // data_offset
    }
    if flags & 0x04 != 0 {
        at += 4; // first_sample_flags
    }
    let per_sample = [0x100, 0x200, 0x400, 0x800]
        .iter()
        .filter(|bit| flags & **bit != 0)
        .count()
        * 4;
    let needed = count
        .checked_mul(per_sample as u64)
        .and_then(|n| n.checked_add(at as u64))
        .ok_or_else(truncated)?;
    if needed > body.len() as u64 {
        return Err(malformed(format!(
            "trun declares {count} samples but holds {} bytes",
            body.len()
        )));
    }
    if flags & 0x100 == 0 {
        return count
            .checked_mul(u64::from(default_duration))
            .ok_or_else(|| malformed("trun duration overflows"));
    }
    let samples = body.get(at..).unwrap_or_default();
    samples
        .chunks_exact(per_sample)
        .take(to_usize(count)?)
        .filter_map(|sample| be_u32(sample, 0))
        .try_fold(0_u64, |sum, d| sum.checked_add(u64::from(d)))
        .ok_or_else(|| malformed("trun duration overflows"))
}

/// Iterates the child boxes of a container's body; a malformed child ends it with an error.
struct Children<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Children<'a> {
    fn new(body: &'a [u8]) -> Self {
        Self {
            rest: body,
            failed: false,
        }
    }
}

impl<'a> Iterator for Children<'a> {
    type Item = Result<([u8; 4], &'a [u8]), BoxError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        // QuickTime may end a container with a 32-bit zero terminator.
        if self.rest.len() < 8 && self.rest.iter().all(|b| *b == 0) {
            return None;
        }
        let result = self.next_child();
        self.failed = result.is_err();
        Some(result)
    }
}

impl<'a> Children<'a> {
    fn next_child(&mut self) -> Result<([u8; 4], &'a [u8]), BoxError> {
        let header = parse_header(self.rest)?
            .ok_or_else(|| malformed(format!("truncated box header ({} bytes)", self.rest.len())))?;
        let len = match header.size {
            Some(size) => size,
            None => self.rest.len() as u64,
        };
        let (Ok(len), Ok(header_len)) = (usize::try_from(len), usize::try_from(header.header_len)) else {
            return Err(malformed("box size does not fit in memory"));
        };
        let Some(whole) = self.rest.get(..len) else {
            return Err(malformed(format!(
                "box '{}' of {len} bytes runs past its parent ({} bytes left)",
                show(header.kind),
                self.rest.len()
            )));
        };
        let body = whole.get(header_len..).unwrap_or_default();
        self.rest = self.rest.get(len..).unwrap_or_default();
        Ok((header.kind, body))
    }
}

fn to_usize(n: u64) -> Result<usize, BoxError> {
    usize::try_from(n).map_err(|_| malformed("size does not fit in memory"))
}

/// All-ones durations mean "unknown" in mvhd/tkhd/mdhd.
fn known(d: u64) -> u64 {
    if d == u64::MAX { 0 } else { d }
}

fn known32(d: u32) -> u64 {
    if d == u32::MAX { 0 } else { u64::from(d) }
}

fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

fn be_u64(buf: &[u8], at: usize) -> Option<u64> {
    let bytes = buf.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn fourcc(buf: &[u8], at: usize) -> Option<[u8; 4]> {
    buf.get(at..at.checked_add(4)?)?.try_into().ok()
}

/// A box type for messages: printable ASCII as is, anything else escaped.
fn show(kind: [u8; 4]) -> String {
    kind.iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

/// Walks a file held in memory as if it were read in ranges of at least `chunk` bytes: the
/// same path the network prober takes, for tests and fuzzing.
pub fn walk_bytes(data: &[u8], chunk: usize) -> Result<Movie, BoxError> {
    let size = data.len() as u64;
    let chunk = chunk.max(1) as u64;
    let mut walker = Walker::new();
    let (mut offset, mut len) = (0_u64, chunk);
    loop {
        let start = offset.min(size);
        let end = start.saturating_add(len.max(chunk)).min(size);
        let slice = data.get(to_usize(start)?..to_usize(end)?).unwrap_or_default();
        let window = Window {
            offset: start,
            data: slice,
            at_eof: end == size,
            file_size: Some(size),
        };
        match walker.step(&window)? {
            Step::Done(movie) => return Ok(movie),
            Step::Need {
                offset: next,
                len: next_len,
            } => (offset, len) = (next, next_len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(body.len() + 8)
            .expect("test box fits in 32 bits")
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out
    }

    fn large_bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = 1_u32.to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(&(body.len() as u64 + 16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    fn ftyp(major: &[u8; 4]) -> Vec<u8> {
        bx(b"ftyp", &cat(&[major.to_vec(), vec![0, 0, 2, 0], b"isom".to_vec()]))
    }

    /// mvhd/mdhd version 0: flags, creation, modification, timescale, duration.
    fn header_v0(kind: &[u8; 4], timescale: u32, duration: u32) -> Vec<u8> {
        let mut body = vec![0_u8; 12];
        body.extend_from_slice(&timescale.to_be_bytes());
        body.extend_from_slice(&duration.to_be_bytes());
        body.extend_from_slice(&[0; 80]);
        bx(kind, &body)
    }

    fn header_v1(kind: &[u8; 4], timescale: u32, duration: u64) -> Vec<u8> {
        let mut body = vec![1, 0, 0, 0];
        body.extend_from_slice(&[0; 16]);
        body.extend_from_slice(&timescale.to_be_bytes());
        body.extend_from_slice(&duration.to_be_bytes());
        bx(kind, &body)
    }

    fn tkhd(id: u32, duration: u32) -> Vec<u8> {
        let mut body = vec![0_u8; 12];
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&duration.to_be_bytes());
        body.extend_from_slice(&[0; 60]);
        bx(b"tkhd", &body)
    }

    fn hdlr(handler: &[u8; 4]) -> Vec<u8> {
        bx(b"hdlr", &cat(&[vec![0; 8], handler.to_vec(), vec![0; 13]]))
    }

    fn trak(id: u32, handler: &[u8; 4], timescale: u32, duration: u32) -> Vec<u8> {
        let mdia = bx(b"mdia", &cat(&[header_v0(b"mdhd", timescale, duration), hdlr(handler)]));
        bx(b"trak", &cat(&[tkhd(id, 0), mdia]))
    }

    fn moov(timescale: u32, duration: u32, extra: &[Vec<u8>]) -> Vec<u8> {
        let mut parts = vec![header_v0(b"mvhd", timescale, duration)];
        parts.extend_from_slice(extra);
        bx(b"moov", &cat(&parts))
    }

    fn walk(data: &[u8]) -> Result<Movie, BoxError> {
        let whole = walk_bytes(data, data.len());
        for chunk in [1, 7, 16, 100] {
            assert_eq!(walk_bytes(data, chunk), whole, "chunk {chunk}");
        }
        whole
    }

    fn malformed_text(data: &[u8]) -> String {
        match walk(data) {
            Err(BoxError::Malformed(m)) => m,
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    #[test]
    fn moov_after_a_large_mdat_with_a_64_bit_size_is_found() {
        let video = trak(1, b"vide", 600, 1800);
        let file = cat(&[ftyp(b"mp42"), large_bx(b"mdat", &[0; 100]), moov(1000, 3000, &[video])]);
        let movie = walk(&file).expect("valid");
        assert_eq!(movie.container, Container::Mp4);
        assert_eq!(movie.duration_ms, 3000);
        assert!(movie.has_video && !movie.has_audio);
    }

    #[test]
    fn a_last_box_of_size_zero_runs_to_the_end_of_the_file() {
        let mut mdat = bx(b"mdat", &[0; 50]);
        mdat[..4].copy_from_slice(&[0; 4]);
        let file = cat(&[ftyp(b"qt  "), moov(600, 900, &[trak(1, b"soun", 1, 1)]), mdat]);
        let movie = walk(&file).expect("valid");
        assert_eq!((movie.container, movie.duration_ms), (Container::Mov, 1500));
        assert!(movie.has_audio);

        let mut last_moov = moov(1000, 2500, &[]);
        last_moov[..4].copy_from_slice(&[0; 4]);
        let file = cat(&[ftyp(b"isom"), bx(b"mdat", &[1; 20]), last_moov]);
        assert_eq!(walk(&file).expect("valid").duration_ms, 2500);
    }

    #[test]
    fn quicktime_without_ftyp_is_mov() {
        let file = cat(&[bx(b"wide", &[]), moov(1000, 2000, &[])]);
        assert_eq!(walk(&file).expect("valid").container, Container::Mov);
    }

    #[test]
    fn a_zero_mvhd_duration_falls_back_to_the_longest_track() {
        let file = cat(&[
            ftyp(b"isom"),
            moov(
                1000,
                0,
                &[trak(1, b"vide", 90_000, 378_000), trak(2, b"soun", 48_000, 96_000)],
            ),
        ]);
        assert_eq!(walk(&file).expect("valid").duration_ms, 4200);
    }

    #[test]
    fn version_1_headers_and_rounding_half_up() {
        let mvhd = header_v1(b"mvhd", 3, 2);
        let file = cat(&[ftyp(b"isom"), bx(b"moov", &mvhd)]);
        assert_eq!(walk(&file).expect("valid").duration_ms, 667);
    }

    #[test]
    fn fragments_are_summed_without_mehd_and_mehd_wins_when_present() {
        let trex = bx(
            b"trex",
            &cat(&[
                vec![0; 4],
                1_u32.to_be_bytes().to_vec(),
                vec![0, 0, 0, 1],
                512_u32.to_be_bytes().to_vec(),
                vec![0; 8],
            ]),
        );
        // tfhd without a default duration: trex's 512 applies; trun without durations.
        let tfhd = bx(b"tfhd", &cat(&[vec![0; 4], 1_u32.to_be_bytes().to_vec()]));
        let trun_default = bx(b"trun", &cat(&[vec![0; 4], 10_u32.to_be_bytes().to_vec()]));
        // trun with per-sample durations (flag 0x100): 3 samples of 1024.
        let mut per_sample = vec![0, 0, 1, 0];
        per_sample.extend_from_slice(&3_u32.to_be_bytes());
        for _ in 0..3 {
            per_sample.extend_from_slice(&1024_u32.to_be_bytes());
        }
        let trun_samples = bx(b"trun", &per_sample);
        let moof = bx(b"moof", &bx(b"traf", &cat(&[tfhd, trun_default, trun_samples])));
        let moov_plain = moov(1000, 0, &[trak(1, b"vide", 1024, 0), bx(b"mvex", &trex)]);
        let file = cat(&[
            ftyp(b"iso5"),
            moov_plain,
            moof.clone(),
            bx(b"mdat", &[0; 30]),
            moof.clone(),
        ]);
        // 2 × (10 × 512 + 3 × 1024) = 16384 ticks at 1024 Hz.
        assert_eq!(walk(&file).expect("valid").duration_ms, 16_000);

        let mehd = bx(b"mehd", &cat(&[vec![0; 4], 7_000_u32.to_be_bytes().to_vec()]));
        let moov_mehd = moov(1000, 0, &[trak(1, b"vide", 1024, 0), bx(b"mvex", &cat(&[mehd, trex]))]);
        let file = cat(&[ftyp(b"iso5"), moov_mehd, moof]);
        assert_eq!(walk(&file).expect("valid").duration_ms, 7_000);
    }

    #[test]
    fn a_trun_claiming_more_samples_than_it_holds_is_refused() {
        let tfhd = bx(b"tfhd", &cat(&[vec![0; 4], 1_u32.to_be_bytes().to_vec()]));
        let mut trun = vec![0, 0, 1, 0];
        trun.extend_from_slice(&u32::MAX.to_be_bytes());
        let moof = bx(b"moof", &bx(b"traf", &cat(&[tfhd, bx(b"trun", &trun)])));
        let file = cat(&[
            ftyp(b"iso5"),
            moov(1000, 0, &[trak(1, b"vide", 1024, 0), bx(b"mvex", &[])]),
            moof,
        ]);
        assert!(malformed_text(&file).contains("trun declares"));
    }

    #[test]
    fn truncated_files_and_sizes_past_the_end_are_errors() {
        let file = cat(&[ftyp(b"isom"), moov(1000, 2000, &[trak(1, b"vide", 1000, 2000)])]);
        for cut in 1..file.len() {
            assert!(walk(&file[..cut]).is_err(), "cut at {cut}");
        }
        let mut past_end = cat(&[ftyp(b"isom"), bx(b"mdat", &[0; 10]), moov(1000, 2000, &[])]);
        let mdat_at = ftyp(b"isom").len();
        past_end[mdat_at..mdat_at + 4].copy_from_slice(&10_000_u32.to_be_bytes());
        assert!(malformed_text(&past_end).contains("past the end of the file"));

        // A child running past its parent.
        let mut bad_child = moov(1000, 2000, &[]);
        bad_child[8..12].copy_from_slice(&5_000_u32.to_be_bytes());
        let file = cat(&[ftyp(b"isom"), bad_child]);
        assert!(malformed_text(&file).contains("runs past its parent"));

        // Sizes smaller than a header would never advance.
        let mut tiny = bx(b"free", &[]);
        tiny[..4].copy_from_slice(&3_u32.to_be_bytes());
        let file = cat(&[ftyp(b"isom"), tiny]);
        assert!(malformed_text(&file).contains("smaller than its header"));
    }

    #[test]
    fn zero_timescales_are_errors_not_divisions() {
        let file = cat(&[ftyp(b"isom"), moov(0, 2000, &[])]);
        assert!(malformed_text(&file).contains("timescale is 0"));
        let file = cat(&[ftyp(b"isom"), moov(1000, 0, &[trak(7, b"vide", 0, 500)])]);
        assert!(malformed_text(&file).contains("track 7"));
    }

    #[test]
    fn deep_nesting_and_many_boxes_neither_recurse_nor_stall() {
        let mut nested = header_v0(b"mvhd", 1000, 2000);
        for _ in 0..10_000 {
            nested = bx(b"trak", &nested);
        }
        let file = cat(&[
            ftyp(b"isom"),
            bx(b"moov", &cat(&[header_v0(b"mvhd", 1000, 2000), nested])),
        ]);
        assert_eq!(walk_bytes(&file, 4096).map(|m| m.duration_ms), Ok(2000));

        let many_tracks: Vec<Vec<u8>> = (0..100).map(|i| trak(i, b"vide", 1, 1)).collect();
        let file = cat(&[ftyp(b"isom"), moov(1000, 1, &many_tracks)]);
        assert!(malformed_text(&file).contains("tracks"));

        let mut frees = ftyp(b"isom");
        for _ in 0..5_000 {
            frees.extend(bx(b"free", &[]));
        }
        frees.extend(moov(1000, 2000, &[]));
        assert_eq!(walk_bytes(&frees, 64).map(|m| m.duration_ms), Ok(2000));
    }

    #[test]
    fn other_formats_are_named() {
        let other = |data: &[u8]| match walk_bytes(data, 4096) {
            Err(BoxError::OtherContainer(name)) => name,
            other => panic!("expected another container, got {other:?}"),
        };
        assert_eq!(other(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01webm...."), "webm");
        assert_eq!(other(b"RIFF\0\0\0\0AVI LIST"), "avi");
        assert_eq!(other(b"<!DOCTYPE html><html>"), "html");
        assert_eq!(other(&bx(b"ftyp", b"heic\0\0\0\0mif1heic")), "heif");
        assert!(other(&bx(b"abcd", &[0; 8])).contains("not recognised"));
        let ftyp_3gp = bx(b"ftyp", b"3gp4\0\0\0\x003gp4");
        assert_eq!(other(&ftyp_3gp), "3gp");
    }

    #[test]
    fn an_empty_file_is_an_error() {
        assert_eq!(walk_bytes(&[], 16), Err(malformed("empty file")));
    }

    /// Random box trees, sometimes corrupted.
    fn tree(depth: u32) -> BoxedStrategy<Vec<u8>> {
        let kinds = prop::sample::select(vec![
            *b"moov", *b"trak", *b"mdia", *b"mvhd", *b"mdhd", *b"tkhd", *b"hdlr", *b"mvex", *b"mehd", *b"trex",
            *b"moof", *b"traf", *b"tfhd", *b"trun", *b"mdat", *b"free", *b"ftyp", *b"udta",
        ]);
        let leaf = (kinds.clone(), prop::collection::vec(any::<u8>(), 0..40)).prop_map(|(kind, body)| bx(&kind, &body));
        if depth == 0 {
            return leaf.boxed();
        }
        prop_oneof![
            leaf,
            (kinds, prop::collection::vec(tree(depth - 1), 0..4))
                .prop_map(|(kind, children)| bx(&kind, &children.concat())),
        ]
        .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn the_walker_never_panics_on_random_trees(
            boxes in prop::collection::vec(tree(4), 0..6),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            chunk in 1_usize..300,
        ) {
            let mut data = cat(&[vec![ftyp(b"isom")], boxes].concat());
            for (at, byte) in flips {
                let i = at.index(data.len());
                data[i] = byte;
            }
            let _ = walk_bytes(&data, chunk);
        }

        #[test]
        fn the_walker_finds_the_duration_wherever_moov_is(
            timescale in 1_u32..,
            duration in 1_u32..,
            before in prop::collection::vec(tree(2), 0..4),
            after in prop::collection::vec(tree(2), 0..4),
            junk in prop::collection::vec(any::<u8>(), 0..64),
            chunk in 1_usize..300,
        ) {
            // Top-level boxes around moov are skipped whatever they hold (moov, moof and
            // ftyp inside them are only read where they belong).
            let skip = |b: Vec<u8>| bx(b"free", &b);
            let movie_box = moov(timescale, duration, &[trak(1, b"vide", 1, 0), bx(b"udta", &junk)]);
            let mut parts = vec![ftyp(b"mp42")];
            parts.extend(before.into_iter().map(skip));
            parts.push(movie_box);
            parts.extend(after.into_iter().map(skip));
            let movie = walk_bytes(&parts.concat(), chunk);
            let expected = media_duration_ms(u64::from(duration), timescale);
            prop_assert_eq!(movie.map(|m| m.duration_ms).ok(), expected);
        }
    }
}
