"""Speech-style audio features in numpy (no torchaudio): wav bytes -> log-mel or MFCC frames.

The recipe is the usual one for keyword spotting: mono, resampled to one rate, 25 ms Hann
frames every 10 ms, power spectrum, triangular mel filters (HTK mel scale), log; MFCCs are
the orthonormal DCT-II of the log-mel frames.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from math import gcd
from typing import Iterator, Literal

import numpy as np

from distdl.specbase import check, knob

LOG_FLOOR = 1e-6  # keeps log() finite on digital silence
# Sample rates accepted, both as the target and in a file's header: a header's rate sets how
# far resampling stretches the file (a 4 KB file that declares 1 Hz would become 32 M samples at 16 kHz).
MIN_RATE, MAX_RATE = 1000, 192000


@dataclass
class AudioSpec:
    """The ``preprocess.audio`` section (rnn family, ``preprocess.input: audio``)."""
    sample_rate: int = knob(16000, help="every file is resampled to this rate (Hz)")
    features: Literal["logmel", "mfcc"] = knob("logmel", help="log-mel energies, or MFCCs (their DCT)")
    n_mels: int = knob(40, help="mel filters")
    n_mfcc: int = knob(13, help="mfcc only: cepstral coefficients kept (at most n_mels)")
    frame_ms: float = knob(25.0, help="length of one analysis frame (a Hann window)")
    hop_ms: float = knob(10.0, help="step between frames")

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from check(MIN_RATE <= self.sample_rate <= MAX_RATE, "sample_rate",
                         f"must be in [{MIN_RATE}, {MAX_RATE}], got {self.sample_rate}")
        yield from check(self.n_mels >= 1, "n_mels", f"must be >= 1, got {self.n_mels}")
        yield from check(1 <= self.n_mfcc <= self.n_mels, "n_mfcc", f"must be in [1, n_mels], got {self.n_mfcc}")
        yield from check(self.frame_ms > 0, "frame_ms", f"must be > 0, got {self.frame_ms}")
        yield from check(0 < self.hop_ms <= self.frame_ms, "hop_ms", f"must be in (0, frame_ms], got {self.hop_ms}")
        yield from check(self.n_mels <= self.n_fft // 2, "n_mels",
                         f"{self.n_mels} filters need a longer frame than {self.frame_ms} ms at {self.sample_rate} Hz")

    @property
    def frame_length(self) -> int:
        return max(1, round(self.sample_rate * self.frame_ms / 1000))

    @property
    def hop_length(self) -> int:
        return max(1, round(self.sample_rate * self.hop_ms / 1000))

    @property
    def n_fft(self) -> int:
        return 1 << (self.frame_length - 1).bit_length()  # the next power of two

    def max_samples(self, frames: int) -> int:
        """The most samples (at ``sample_rate``) that ``features`` turns into at most ``frames`` frames."""
        return self.frame_length + frames * self.hop_length - 1

    @property
    def size(self) -> int:
        """Features per frame."""
        return self.n_mfcc if self.features == "mfcc" else self.n_mels


def read_wav(data: bytes, sample_rate: int, max_samples: int | None = None) -> np.ndarray:
    """WAV bytes (PCM 8/16/24/32-bit or float, any channel count) -> mono float32 in [-1, 1]
    at ``sample_rate``. Raises ValueError for anything that is not a readable WAV file, a
    header rate outside [MIN_RATE, MAX_RATE], or a clip longer than ``max_samples`` (None:
    any length) at ``sample_rate``: both are checked on the raw samples (no larger than
    ``data``), before conversion and resampling could expand them."""
    import scipy.io.wavfile  # here, as scipy.signal and .fft below: ~1 s of CPU that only audio models pay
    import scipy.signal

    try:
        rate, samples = scipy.io.wavfile.read(io.BytesIO(data))
    except (struct.error, EOFError) as exc:  # scipy's answer to a file cut off inside its header
        raise ValueError(f"not a complete WAV file: {exc}") from None
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"WAV header declares {rate} Hz; accepted: {MIN_RATE} to {MAX_RATE} Hz")
    resampled = -(-len(samples) * sample_rate // rate)  # ceil: what resample_poly returns
    if max_samples is not None and resampled > max_samples:
        raise ValueError(f"clip of {len(samples) / rate:.2f} s is {resampled} samples at {sample_rate} Hz, "
                         f"more than the {max_samples} that fit max_length")
    if samples.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        samples = (samples.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(samples.dtype, np.integer):  # 24-bit arrives left-justified in int32
        samples = samples.astype(np.float32) / -float(np.iinfo(samples.dtype).min)
    samples = samples.astype(np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)  # (N, channels) -> mono
    if rate != sample_rate:
        g = gcd(rate, sample_rate)
        samples = scipy.signal.resample_poly(samples, sample_rate // g, rate // g).astype(np.float32)
    return samples


def mel_filters(n_mels: int, n_fft: int, sample_rate: int) -> np.ndarray:
    """Triangular filters (n_mels, n_fft // 2 + 1), evenly spaced on the HTK mel scale from 0 Hz to Nyquist."""
    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def to_hz(mel):
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    edges = to_hz(np.linspace(0.0, to_mel(sample_rate / 2), n_mels + 2))  # (n_mels + 2,) Hz
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)  # (n_fft // 2 + 1,) Hz
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (center - lower)
    falling = (upper - bins) / (upper - center)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def features(samples: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """Mono samples (N,) -> float32 (frames, spec.size); a clip shorter than a frame gives one frame."""
    frame, hop = spec.frame_length, spec.hop_length
    if len(samples) < frame:
        samples = np.pad(samples, (0, frame - len(samples)))
    frames = np.lib.stride_tricks.sliding_window_view(samples, frame)[::hop]  # (T, frame)
    spectrum = np.fft.rfft(frames * np.hanning(frame).astype(np.float32), n=spec.n_fft)  # (T, n_fft/2+1)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    log_mel = np.log(power @ mel_filters(spec.n_mels, spec.n_fft, spec.sample_rate).T + LOG_FLOOR)  # (T, n_mels)
    if spec.features == "mfcc":
        import scipy.fft

        return scipy.fft.dct(log_mel, type=2, axis=1, norm="ortho")[:, :spec.n_mfcc].astype(np.float32)
    return log_mel.astype(np.float32)
