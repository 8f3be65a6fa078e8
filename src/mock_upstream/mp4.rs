//! A tiny, valid, decodable mp4 (one 16x16 H.264 frame held for the whole length).

/// Width and height of the single frame, in pixels (one macroblock).
const SIDE: u16 = 16;
/// Movie and media timescale: durations are in milliseconds.
const TIMESCALE: u32 = 1000;

/// A real, small (under 1 KB), valid mp4 whose `mvhd` and `mdhd` duration is `duration_ms`
/// at timescale 1000: `ftyp`, `moov` (`mvhd`, one video `trak`), then `mdat` holding one
/// H.264 frame displayed for the whole length.
///
/// Durations above `u32::MAX` ms (about 49 days) are saturated.
pub fn mp4_with_duration(duration_ms: u64) -> Vec<u8> {
    let duration = u32::try_from(duration_ms).unwrap_or(u32::MAX);
    let sps = h264::sps();
    let pps = h264::pps();
    let mut sample = Vec::new();
    let idr = h264::idr_slice();
    // Length-prefixed NAL unit (avcC lengthSizeMinusOne = 3); the slice is a few hundred bytes.
    sample.extend_from_slice(&u32::try_from(idr.len()).unwrap_or(u32::MAX).to_be_bytes());
    sample.extend_from_slice(&idr);

    let ftyp = ftyp();
    // The chunk offset field has a fixed width, so a first pass gives the final moov size.
    let probe_len = moov(duration, &sps, &pps, sample.len(), 0).len();
    let offset = ftyp.len() + probe_len + 8;
    let moov = moov(duration, &sps, &pps, sample.len(), offset);

    let mut out = Vec::with_capacity(offset + sample.len());
    out.extend_from_slice(&ftyp);
    out.extend_from_slice(&moov);
    out.extend_from_slice(&boxed(b"mdat", &sample));
    out
}

fn boxed(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let size = u32::try_from(payload.len() + 8).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(payload);
    out
}

fn full_box(kind: &[u8; 4], version: u8, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(payload.len() + 4);
    body.push(version);
    body.extend_from_slice(&flags.to_be_bytes()[1..]);
    body.extend_from_slice(payload);
    boxed(kind, &body)
}

fn u32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The identity transformation matrix of `mvhd` and `tkhd`.
fn matrix() -> Vec<u8> {
    u32s(&[0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000])
}

fn ftyp() -> Vec<u8> {
    boxed(b"ftyp", b"isom\x00\x00\x02\x00isomiso2avc1mp41")
}

fn moov(duration: u32, sps: &[u8], pps: &[u8], sample_len: usize, offset: usize) -> Vec<u8> {
    let mvhd = full_box(
        b"mvhd",
        0,
        0,
        &concat(&[
            &u32s(&[0, 0, TIMESCALE, duration, 0x0001_0000]),
            &[0x01, 0x00, 0, 0],
            &[0; 8],
            &matrix(),
            &[0; 24],
            &u32s(&[2]),
        ]),
    );
    boxed(
        b"moov",
        &concat(&[&mvhd, &trak(duration, sps, pps, sample_len, offset)]),
    )
}

fn trak(duration: u32, sps: &[u8], pps: &[u8], sample_len: usize, offset: usize) -> Vec<u8> {
    let side = u32::from(SIDE) << 16;
    let tkhd = full_box(
        b"tkhd",
        0,
        0x3,
        &concat(&[
            &u32s(&[0, 0, 1, 0, duration, 0, 0]),
            &[0; 8],
            &matrix(),
            &u32s(&[side, side]),
        ]),
    );
    let mdhd = full_box(
        b"mdhd",
        0,
        0,
        &concat(&[&u32s(&[0, 0, TIMESCALE, duration]), &[0x55, 0xC4, 0, 0]]),
    );
    let hdlr = full_box(
        b"hdlr",
        0,
        0,
        &concat(&[&u32s(&[0]), b"vide", &[0; 12], b"VideoHandler\0"]),
    );
    let vmhd = full_box(b"vmhd", 0, 1, &[0; 8]);
    let dinf = boxed(
        b"dinf",
        &full_box(b"dref", 0, 0, &concat(&[&u32s(&[1]), &full_box(b"url ", 0, 1, &[])])),
    );
    let stbl = stbl(duration, sps, pps, sample_len, offset);
    let minf = boxed(b"minf", &concat(&[&vmhd, &dinf, &stbl]));
    let mdia = boxed(b"mdia", &concat(&[&mdhd, &hdlr, &minf]));
    boxed(b"trak", &concat(&[&tkhd, &mdia]))
}

fn stbl(duration: u32, sps: &[u8], pps: &[u8], sample_len: usize, offset: usize) -> Vec<u8> {
    let sample_len = u32::try_from(sample_len).unwrap_or(u32::MAX);
    let offset = u32::try_from(offset).unwrap_or(u32::MAX);
    let stsd = full_box(b"stsd", 0, 0, &concat(&[&u32s(&[1]), &avc1(sps, pps)]));
    let stts = full_box(b"stts", 0, 0, &u32s(&[1, 1, duration]));
    let stss = full_box(b"stss", 0, 0, &u32s(&[1, 1]));
    let stsc = full_box(b"stsc", 0, 0, &u32s(&[1, 1, 1, 1]));
    let stsz = full_box(b"stsz", 0, 0, &u32s(&[0, 1, sample_len]));
    let stco = full_box(b"stco", 0, 0, &u32s(&[1, offset]));
    boxed(b"stbl", &concat(&[&stsd, &stts, &stss, &stsc, &stsz, &stco]))
}

fn avc1(sps: &[u8], pps: &[u8]) -> Vec<u8> {
    let mut avcc = vec![1, sps[1], sps[2], sps[3], 0xFF, 0xE1];
    avcc.extend_from_slice(&u16::try_from(sps.len()).unwrap_or(u16::MAX).to_be_bytes());
    avcc.extend_from_slice(sps);
    avcc.push(1);
    avcc.extend_from_slice(&u16::try_from(pps.len()).unwrap_or(u16::MAX).to_be_bytes());
    avcc.extend_from_slice(pps);
    let mut compressor = [0u8; 32];
    compressor[0] = 10;
    compressor[1..11].copy_from_slice(b"vidgatemck");
    let entry = concat(&[
        &[0; 6],
        &1u16.to_be_bytes(),
        &[0; 16],
        &SIDE.to_be_bytes(),
        &SIDE.to_be_bytes(),
        &u32s(&[0x0048_0000, 0x0048_0000, 0]),
        &1u16.to_be_bytes(),
        &compressor,
        &0x0018u16.to_be_bytes(),
        &(-1i16).to_be_bytes(),
        &boxed(b"avcC", &avcc),
    ]);
    boxed(b"avc1", &entry)
}

/// Hand-built H.264 Constrained Baseline bitstream: SPS, PPS and one IDR slice holding a
/// single I_PCM macroblock (a black 16x16 picture), so the file decodes without an encoder.
mod h264 {
    /// Writes bits most significant first, with Exp-Golomb codes.
    #[derive(Default)]
    struct Bits {
        bytes: Vec<u8>,
        used: u8,
    }

    impl Bits {
        fn bit(&mut self, bit: bool) {
            if self.used == 0 {
                self.bytes.push(0);
            }
            if bit && let Some(last) = self.bytes.last_mut() {
                *last |= 0x80 >> self.used;
            }
            self.used = (self.used + 1) % 8;
        }

        fn u(&mut self, bits: u8, value: u32) {
            for i in (0..bits).rev() {
                self.bit((value >> i) & 1 == 1);
            }
        }

        fn ue(&mut self, value: u32) {
            let coded = value + 1;
            let len = 32 - coded.leading_zeros();
            self.u((len - 1) as u8, 0);
            self.u(len as u8, coded);
        }

        fn align_zero(&mut self) {
            while self.used != 0 {
                self.bit(false);
            }
        }

        /// `rbsp_trailing_bits`: a stop bit then zero bits to the byte boundary.
        fn finish(mut self) -> Vec<u8> {
            self.bit(true);
            self.align_zero();
            self.bytes
        }
    }

    /// A NAL unit: header byte, then the RBSP with emulation prevention bytes inserted.
    fn nal(header: u8, rbsp: &[u8]) -> Vec<u8> {
        let mut out = vec![header];
        let mut zeros = 0;
        for &byte in rbsp {
            if zeros >= 2 && byte <= 3 {
                out.push(3);
                zeros = 0;
            }
            out.push(byte);
            zeros = if byte == 0 { zeros + 1 } else { 0 };
        }
        out
    }

    pub(super) fn sps() -> Vec<u8> {
        let mut b = Bits::default();
        b.u(8, 66); // profile_idc: Baseline
        b.u(8, 0xC0); // constraint_set0 and set1: Constrained Baseline
        b.u(8, 10); // level_idc 1.0
        b.ue(0); // seq_parameter_set_id
        b.ue(0); // log2_max_frame_num_minus4
        b.ue(2); // pic_order_cnt_type
        b.ue(1); // max_num_ref_frames
        b.bit(false); // gaps_in_frame_num_value_allowed_flag
        b.ue(0); // pic_width_in_mbs_minus1
        b.ue(0); // pic_height_in_map_units_minus1
        b.bit(true); // frame_mbs_only_flag
        b.bit(true); // direct_8x8_inference_flag
        b.bit(false); // frame_cropping_flag
        b.bit(false); // vui_parameters_present_flag
        nal(0x67, &b.finish())
    }

    pub(super) fn pps() -> Vec<u8> {
        let mut b = Bits::default();
        b.ue(0); // pic_parameter_set_id
        b.ue(0); // seq_parameter_set_id
        b.bit(false); // entropy_coding_mode_flag: CAVLC
        b.bit(false); // bottom_field_pic_order_in_frame_present_flag
        b.ue(0); // num_slice_groups_minus1
        b.ue(0); // num_ref_idx_l0_default_active_minus1
        b.ue(0); // num_ref_idx_l1_default_active_minus1
        b.bit(false); // weighted_pred_flag
        b.u(2, 0); // weighted_bipred_idc
        b.ue(0); // pic_init_qp_minus26 (se 0 codes as ue 0)
        b.ue(0); // pic_init_qs_minus26
        b.ue(0); // chroma_qp_index_offset
        b.bit(true); // deblocking_filter_control_present_flag
        b.bit(false); // constrained_intra_pred_flag
        b.bit(false); // redundant_pic_cnt_present_flag
        nal(0x68, &b.finish())
    }

    pub(super) fn idr_slice() -> Vec<u8> {
        let mut b = Bits::default();
        b.ue(0); // first_mb_in_slice
        b.ue(7); // slice_type: I (all slices)
        b.ue(0); // pic_parameter_set_id
        b.u(4, 0); // frame_num
        b.ue(0); // idr_pic_id
        b.bit(false); // no_output_of_prior_pics_flag
        b.bit(false); // long_term_reference_flag
        b.ue(0); // slice_qp_delta (se 0)
        b.ue(1); // disable_deblocking_filter_idc
        b.ue(25); // mb_type: I_PCM
        b.align_zero(); // pcm_alignment_zero_bit
        for _ in 0..256 {
            b.u(8, 16); // luma: black
        }
        for _ in 0..128 {
            b.u(8, 128); // chroma: neutral
        }
        nal(0x65, &b.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::mp4_with_duration;

    fn be32(data: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
    }

    /// The (type, payload) boxes directly inside `data`, checking that sizes tile it exactly.
    fn children(data: &[u8]) -> Vec<([u8; 4], &[u8])> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let size = be32(data, at) as usize;
            assert!(size >= 8 && at + size <= data.len(), "bad box size {size} at {at}");
            let kind = [data[at + 4], data[at + 5], data[at + 6], data[at + 7]];
            out.push((kind, &data[at + 8..at + size]));
            at += size;
        }
        out
    }

    fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> &'a [u8] {
        children(data)
            .into_iter()
            .find(|(k, _)| k == kind)
            .map(|(_, payload)| payload)
            .unwrap_or_else(|| panic!("no {} box", String::from_utf8_lossy(kind)))
    }

    #[test]
    fn the_mp4_has_ftyp_moov_mdat_and_the_requested_duration() {
        for duration in [500u64, 4800, 5000, 10_000] {
            let file = mp4_with_duration(duration);
            assert!(file.len() < 4096, "{} bytes", file.len());
            let top: Vec<[u8; 4]> = children(&file).into_iter().map(|(k, _)| k).collect();
            assert_eq!(top, [*b"ftyp", *b"moov", *b"mdat"]);
            let moov = child(&file, b"moov");
            let mvhd = child(moov, b"mvhd");
            assert_eq!(be32(mvhd, 12), 1000, "mvhd timescale");
            assert_eq!(u64::from(be32(mvhd, 16)), duration, "mvhd duration");
            let mdia = child(child(moov, b"trak"), b"mdia");
            let mdhd = child(mdia, b"mdhd");
            assert_eq!(be32(mdhd, 12), 1000, "mdhd timescale");
            assert_eq!(u64::from(be32(mdhd, 16)), duration, "mdhd duration");
            assert_eq!(&child(mdia, b"hdlr")[8..12], b"vide");
            let stbl = child(child(mdia, b"minf"), b"stbl");
            let stco = child(stbl, b"stco");
            let offset = be32(stco, 8) as usize;
            let stsz = child(stbl, b"stsz");
            let sample_len = be32(stsz, 12) as usize;
            let mdat = child(&file, b"mdat");
            assert_eq!(
                offset,
                file.len() - mdat.len(),
                "chunk offset points at the mdat payload"
            );
            assert_eq!(sample_len, mdat.len());
            assert_eq!(be32(mdat, 0) as usize + 4, sample_len, "one length-prefixed NAL unit");
        }
    }

    #[test]
    fn ffprobe_reads_the_duration_when_it_is_installed() {
        let dir = std::env::temp_dir().join(format!("vidgate-mp4-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("probe.mp4");
        std::fs::write(&path, mp4_with_duration(4800)).unwrap();
        let output = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-show_entries"])
            .args([
                "format=duration:stream=codec_name,width,height,nb_read_frames",
                "-of",
                "default=nw=1",
            ])
            .arg(&path)
            .output();
        let _ = std::fs::remove_dir_all(&dir);
        let Ok(output) = output else { return }; // ffprobe not installed: the box walk above suffices
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "{text} {:?}",
            output.stderr
        );
        for expected in [
            "codec_name=h264",
            "width=16",
            "height=16",
            "nb_read_frames=1",
            "duration=4.800000",
        ] {
            assert!(
                text.lines().any(|line| line == expected),
                "missing {expected} in {text}"
            );
        }
    }
}
