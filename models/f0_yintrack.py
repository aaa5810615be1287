"""Streaming YIN with candidate tracking (backend ``yin-track``): one-shot and incremental,
identical output, no lookahead beyond the analysis window.

The analysis is :mod:`comostream.models.f0_yin`'s (24 kHz, hop 256, frame ``t`` from the 1024
samples ``[256 t - 512, 256 t + 512)``, 3 kHz frame-local low-pass, lag-centred difference
function, CMNDF ``d'(tau)``), but instead of one dip per frame it keeps up to
:data:`MAX_CANDIDATES` local minima of ``d'`` in
``[sr / fmax, sr / fmin]`` (the true period, its multiples = sub-octaves, and dips of strong
harmonics = super-octaves), each with

* the pYIN prior mass (Mauch & Dixon 2014): the probability, for a threshold drawn from
  ``Beta(2, b)`` with mean ``yin_threshold``, that it is the first dip below the threshold;
* its period from parabolic interpolation of ``d``.

Decoding is a causal Viterbi (max-product forward pass, decision at lag 0) over the states
"candidate ``i`` of this frame" plus "unvoiced":

* observation log-likelihood of candidate ``i``: ``log(mass_i + _MASS_FLOOR)`` plus the voiced
  evidence ``log(1 - p_u)``, minus ``_SUB_PENALTY`` when a dip at 1/2 or 1/3 of its period is
  about as deep (it is then likely a sub-octave); of unvoiced: ``log p_u``, with ``p_u`` a
  logistic of the frame's best ``d'`` around ``_VOICING`` (frames below ``silence_db`` dBFS are
  forced unvoiced);
* transition between voiced states: ``_JUMP_COST`` per 100 cents of pitch change beyond
  ``_FREE_CENTS`` (so vibrato and portamento are free, an octave costs about 4 nats);
* voicing changes cost ``_VOICING_COST``; the unvoiced state remembers the pitch it left and a
  voiced restart after a short gap pays a (weaker) jump cost from it.

Refinement (:func:`_refine`): the decoder fixes the octave and the voicing, then each voiced
frame's pitch is re-measured on the same window whitened by its own order-12 LPC inverse filter
(autocorrelation method on the Hann-windowed low-passed frame, bandwidth expansion ``a_i 0.9^i``):
whitening removes the formants, so the difference compares the pulse spacing rather than the
waveform shape, which a vowel or consonant transition inside the window pulls off the period. The
span is pitch-adaptive and centred on the frame centre: ``_REFINE_PERIODS`` = 4 decoded periods
(8-40 ms instead of the whole 42 ms window), the deepest minimum of the residual's lag-centred
difference within 150 cents of the decoded period, parabolic vertex. Two probes of 3 periods,
1.5 periods either side of the centre, then classify the frame:

* one probe 4 times less periodic than the other (normalised dip depth): a voicing boundary (the
  note starts or ends inside the span), so the span moves 0.75 period to the periodic side;
* both periodic and their periods more than 30 cents per frame apart: a glide, so the residual is
  time-warped (:func:`_warp`) to make an exponential glide of the probes' rate periodic with the
  centre's period, and that dip is kept when it is at least 1/0.8 times deeper than the unwarped.

Why: before, 65-78% of the remaining gross errors (train splits) sat on frames whose reference
moves more than 60 cents per frame (legato steps, scoops), where a 42 ms window averages periods up
to 20% apart (12% of those frames off); most of the rest at the first and last voiced frame.
Measured on the train splits (synthetic / real re-sung, gross errors of voiced-in-both frames),
from the whole-window whitened refinement's 0.58% / 0.53%: the 4-period span 0.42% / 0.30% (2 or 8
periods: 0.60% / 0.49% and 0.63% / 0.59%; not whitened: 1.2% / 1.2%), plus the time warp 0.34% /
0.23%, plus the boundary shift 0.33% / 0.20%. The decoder's voicing then trades some of that for
VDE: ``_VOICING`` 0.55 -> 0.575 and ``_SUB_SCALE`` 1.5 -> 1.75 (which keeps the breathy suite's
sub-harmonic restarts away): 0.35% / 0.23% gross at VDE 3.00% -> 2.89% / 3.02% -> 2.91%, octave
errors 0.03% / 0.02%. Tried and dropped: a longer span or a window length chosen from the probes'
glide rate (steady and glide errors trade), a long-window estimate first with the short span
searched near it (0.41% / 0.28%), a fixed later analysis centre (worse either way), voicing by
normalised candidate mass (gross rises faster than VDE falls), a voicing cost of 1.5 (blips of
sub-harmonic pitch on breathy notes). The refinement costs about 0.004 RTF (one thread).
Held-out test splits (``comostream bench f0 --backends yin-track --real DIR``, raw output):
synthetic gross 0.70% -> 0.47%, octave 0 -> 0.02%, VDE 2.87% -> 2.69%; real re-sung gross 0.52%
-> 0.25%, octave 0.03% -> 0.03%, VDE 3.03% -> 2.92%.

The output of frame ``t`` is the best state of the forward pass at ``t``: it depends on frames
``<= t`` only (``lookahead_frames = 0``), so the tracker adds no latency to the engine. A single
frame whose best dip is an octave away from a stable path is outvoted by the path; a real leap
is followed as soon as the new octave's evidence outweighs one jump cost (typically 1-2 frames).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from comostream.models.config import F0Config
from comostream.models.f0_track import F0Track, check_audio, n_frames
from comostream.models.f0_yin import (
    _LOWPASS_HALF,
    _LOWPASS_HZ,
    LOOKAHEAD_SAMPLES,
    WINDOW,
    IncrementalF0,
    _beta_cdf,
    _cmndf,
    _lags,
    _level_db,
    _lowpass,
    _lowpass_frame,
)

__all__ = ["MAX_CANDIDATES", "yintrack_f0", "IncrementalYinTrack"]

MAX_CANDIDATES = 8  # CMNDF dips kept per frame
_KEEP_MARGIN = 0.1  # d' units: dips this close to the deepest are kept first, shortest lag first
_MASS_FLOOR = 0.005  # prior mass added to every dip (a dip no threshold picks is still possible)
_JUMP_COST = 1.6  # nats per 100 cents of pitch change beyond _FREE_CENTS
_FREE_CENTS = 60.0  # cents of pitch change per frame that cost nothing (portamento, vibrato)
_VOICING_COST = 2.0  # nats for a voiced <-> unvoiced change
_GAP_WEIGHT = 0.15  # jump-cost weight across an unvoiced gap (pitch memory of the unvoiced state)
_MAX_GAP = 8  # frames after which the unvoiced state forgets the pitch it left
_VOICING = 0.575  # d' units: the voicing evidence is 1/2 where the frame's best dip is this deep
_VOICING_SLOPE = 0.05  # d' units: width of the logistic voicing evidence around _VOICING
# a candidate with a dip at 1/n of its period (n >= 2) whose d' is at most _SUB_SCALE times its
# own plus _SUB_MARGIN is likely a sub-octave (YIN's "shortest of the deep dips" rule, soft):
_SUB_MARGIN = 0.02  # d' units
_SUB_SCALE = 1.75
_SUB_PENALTY = 5.0  # nats taken from its observation log-likelihood
_HARMONIC_TOL = 0.03  # relative: how close a period ratio must be to an integer n (times n)
# the decoded pitch is re-measured on the frame whitened by its own LPC inverse filter:
_REFINE_ORDER = 12  # LPC order
_REFINE_GAMMA = 0.9  # bandwidth expansion a_i gamma^i (partial whitening)
_REFINE_CENTS = 150.0  # search range around the decoded pitch, cents
_REFINE_PERIODS = 4.0  # span of the difference, in decoded periods (centred on the frame)
_PROBE_PERIODS = 3.0  # span of the two boundary/glide probes, periods
_PROBE_SHIFT = 1.5  # probe centres this many periods either side of the frame centre
_BOUNDARY_RATIO = 4.0  # one probe this many times less periodic: a voicing boundary
_BOUNDARY_SHIFT = 0.75  # periods: the span is moved to the periodic side at a boundary
_GLIDE_CENTS = 30.0  # cents per frame between the probes above which the frame is time-warped
_WARP_GAIN = 0.8  # the warped dip must be this much deeper (relative) to be kept
_STATE = 2 * MAX_CANDIDATES + 4  # decoder state, see _decode
DECODER_PARAMS = np.array(
    [
        _MASS_FLOOR,
        _JUMP_COST,
        _FREE_CENTS,
        _VOICING_COST,
        _GAP_WEIGHT,
        _MAX_GAP,
        _VOICING_SLOPE,
        _SUB_MARGIN,
        _SUB_PENALTY,
        _SUB_SCALE,
    ]
)


@njit(cache=True, fastmath={"reassoc", "contract"})
def _whiten(
    y: np.ndarray,
    order: int,
    gamma: float,
    hann: np.ndarray,
    yw: np.ndarray,
    r: np.ndarray,
    a: np.ndarray,
    a_prev: np.ndarray,
    e: np.ndarray,
) -> None:
    """LPC residual ``e`` of ``y`` (order ``order``, autocorrelation method on the Hann-windowed
    ``y``, bandwidth-expanded by ``gamma``): the formants removed, the pulse spacing kept."""
    n = y.shape[0]
    for j in range(n):
        yw[j] = y[j] * hann[j]
    for i in range(order + 1):
        acc = 0.0
        for j in range(n - i):
            acc += yw[j] * yw[j + i]
        r[i] = acc
    if r[0] <= 0.0:
        e[:] = y
        return
    r[0] *= 1.0 + 1e-4
    a[:] = 0.0
    a[0] = 1.0
    err = r[0]
    for i in range(1, order + 1):
        acc = r[i]
        for j in range(1, i):
            acc += a[j] * r[i - j]
        kr = -acc / err
        a_prev[:] = a
        for j in range(1, i):
            a[j] = a_prev[j] + kr * a_prev[i - j]
        a[i] = kr
        err *= 1.0 - kr * kr
        if err <= 0.0:
            break
    g = 1.0
    for i in range(1, order + 1):
        g *= gamma
        a[i] *= g
    for j in range(n):
        acc = y[j]
        for i in range(1, min(order, j) + 1):
            acc += a[i] * y[j - i]
        e[j] = acc


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _candidates(
    buf: np.ndarray,
    start0: int,
    lowpass: np.ndarray,
    tau_min: int,
    tau_max: int,
    width: int,
    threshold: float,
    cand_f0: np.ndarray,
    cand_mass: np.ndarray,
    cand_dn: np.ndarray,
    best_dn: np.ndarray,
    level_db: np.ndarray,
) -> None:
    """CMNDF dips of frames ``k = 0 .. len(best_dn) - 1`` (window ``buf[start0 + 256 k:][:1024]``).

    Writes per frame up to ``MAX_CANDIDATES`` candidates ``cand_f0[k, i]`` Hz (0 = none) with
    their pYIN prior mass ``cand_mass[k, i]`` and dip value ``cand_dn[k, i]``, the smallest dip
    value ``best_dn[k]`` (1.0 when there is no dip) and the RMS level ``level_db[k]`` dBFS.
    """
    beta_b = 2.0 / threshold - 2.0
    d = np.empty(tau_max + 2)
    dn = np.empty(tau_max + 2)
    n_lp = lowpass.shape[0]
    y = np.empty(WINDOW - n_lp + 1)
    lags = np.empty(tau_max + 2, np.int64)
    vals = np.empty(tau_max + 2)
    masses = np.empty(tau_max + 2)
    for k in range(best_dn.shape[0]):
        frame = buf[start0 + 256 * k : start0 + 256 * k + WINDOW]
        level_db[k] = _level_db(frame)
        _lowpass_frame(frame, lowpass, y)
        _cmndf(y, width, tau_max, d, dn)
        # every local minimum below 1, with its pYIN first-dip-below-threshold mass
        n = 0
        run_min = 1.0
        for tau in range(tau_min, tau_max + 1):
            v = dn[tau]
            if v < 1.0 and v < dn[tau - 1] and v <= dn[tau + 1]:
                mass = 0.0
                if v < run_min:
                    mass = _beta_cdf(run_min, beta_b) - _beta_cdf(v, beta_b)
                    run_min = v
                lags[n] = tau
                vals[n] = v
                masses[n] = mass
                n += 1
        best_dn[k] = run_min
        for i in range(MAX_CANDIDATES):
            cand_f0[k, i] = 0.0
            cand_mass[k, i] = 0.0
            cand_dn[k, i] = 1.0
        # keep, in lag order, the dips within _KEEP_MARGIN of the deepest (the period and its
        # multiples), then the deepest of the rest, up to MAX_CANDIDATES
        for i in range(min(n, MAX_CANDIDATES)):
            pick = -1
            for j in range(n):
                if lags[j] >= 0 and vals[j] <= run_min + _KEEP_MARGIN:
                    pick = j
                    break
            if pick < 0:
                for j in range(n):
                    if lags[j] >= 0 and (pick < 0 or vals[j] < vals[pick]):
                        pick = j
            tau = lags[pick]
            lags[pick] = -1
            lo, mid, hi = d[tau - 1], d[tau], d[tau + 1]
            curv = lo - 2.0 * mid + hi
            shift = 0.0
            if curv > 0.0:
                shift = min(1.0, max(-1.0, 0.5 * (lo - hi) / curv))
            cand_f0[k, i] = 24000.0 / (tau + shift)
            cand_mass[k, i] = masses[pick]
            cand_dn[k, i] = vals[pick]


@njit(cache=True, nogil=True)
def _decode(
    cand_f0: np.ndarray,
    cand_mass: np.ndarray,
    cand_dn: np.ndarray,
    best_dn: np.ndarray,
    level_db: np.ndarray,
    voicing: float,
    silence_db: float,
    params: np.ndarray,
    state: np.ndarray,
    out_f0: np.ndarray,
    out_voiced: np.ndarray,
) -> None:
    """Causal Viterbi over candidates + unvoiced, frame by frame, carrying ``state``.

    ``params``: :data:`DECODER_PARAMS` (mass floor, jump cost, free cents, voicing cost, gap
    weight, max gap, voicing slope, sub-octave margin, penalty and scale).

    ``state``: ``[0:K]`` previous candidates' log2 F0 (NaN = none), ``[K:2K]`` their path
    scores, ``[2K]`` unvoiced path score, ``[2K+1]`` log2 F0 the unvoiced path left (NaN =
    none), ``[2K+2]`` frames the unvoiced path has been unvoiced, ``[2K+3]`` unused.
    """
    mass_floor, jump_cost, free_cents, voicing_cost = params[0], params[1], params[2], params[3]
    gap_weight, max_gap, voicing_slope = params[4], params[5], params[6]
    sub_margin, sub_penalty, sub_scale = params[7], params[8], params[9]
    kk = MAX_CANDIDATES
    lf = np.empty(kk)
    score = np.empty(kk)
    for k in range(best_dn.shape[0]):
        loud = level_db[k] > silence_db
        z = (best_dn[k] - voicing) / voicing_slope
        p_u = 1.0 / (1.0 + math.exp(-z)) if z > -30.0 else 0.0
        p_u = min(max(p_u, 1e-4), 1.0 - 1e-4)
        log_v = math.log(1.0 - p_u)
        # best voiced predecessor for a restart from unvoiced, and the unvoiced update
        u_prev = state[2 * kk]
        u_ref = state[2 * kk + 1]
        u_gap = state[2 * kk + 2]
        best_v = -1e30
        best_v_lf = math.nan
        for j in range(kk):
            pj = state[j]
            if not math.isnan(pj) and state[kk + j] > best_v:
                best_v = state[kk + j]
                best_v_lf = pj
        from_v = best_v - voicing_cost
        if from_v > u_prev:
            new_u = from_v
            new_ref = best_v_lf
            new_gap = 1.0
        else:
            new_u = u_prev
            new_ref = u_ref
            new_gap = u_gap + 1.0
        new_u += math.log(p_u) if loud else 0.0
        # voiced candidates
        for i in range(kk):
            f = cand_f0[k, i]
            if f <= 0.0 or not loud:
                lf[i] = math.nan
                score[i] = -1e30
                continue
            o = math.log2(f)
            lf[i] = o
            obs = math.log(cand_mass[k, i] + mass_floor) + log_v
            # a sub-harmonic: a dip at 1/n of this period (n >= 2) is about as deep
            for j in range(kk):
                fj = cand_f0[k, j]
                if fj > 0.0 and cand_dn[k, j] <= sub_scale * cand_dn[k, i] + sub_margin:
                    r = fj / f
                    n = round(r)
                    if n >= 2 and abs(r - n) < _HARMONIC_TOL * n:
                        obs -= sub_penalty
                        break
            best = -1e30
            for j in range(kk):
                pj = state[j]
                if math.isnan(pj):
                    continue
                cents = abs(o - pj) * 1200.0
                s = state[kk + j] - jump_cost * max(0.0, cents - free_cents) / 100.0
                if s > best:
                    best = s
            s = u_prev - voicing_cost
            if not math.isnan(u_ref) and u_gap <= max_gap:
                cents = abs(o - u_ref) * 1200.0
                s -= gap_weight * jump_cost * max(0.0, cents - free_cents) / 100.0
            if s > best:
                best = s
            score[i] = best + obs
        # decision at lag 0: the best voiced state gives the pitch, voiced when it beats the
        # unvoiced state; then renormalise
        top = new_u
        arg = -1
        for i in range(kk):
            if score[i] > -1e29 and (arg < 0 or score[i] > score[arg]):
                arg = i
        if arg >= 0 and score[arg] >= new_u:
            top = score[arg]
            out_f0[k] = 2.0 ** lf[arg]
            out_voiced[k] = True
        else:
            out_f0[k] = 0.0
            out_voiced[k] = False
        for i in range(kk):
            state[i] = lf[i]
            state[kk + i] = score[i] - top if score[i] > -1e29 else -1e30
        state[2 * kk] = new_u - top
        state[2 * kk + 1] = new_ref
        state[2 * kk + 2] = new_gap


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _dip(
    y: np.ndarray, width: int, lo: int, hi: int, off: int, d: np.ndarray
) -> tuple[float, float]:
    """Deepest local minimum of the lag-centred difference of ``y`` over ``width`` samples in lags
    ``[lo, hi]``, the span centred ``off`` samples from ``y``'s centre: ``(lag, depth)``, the
    parabolic-vertex lag in samples (-1.0 when there is no minimum) and ``d / (energy of both
    spans)`` there (0 = periodic, about 1 = unrelated). ``d (>= hi + 2,)`` is scratch."""
    half = y.shape[0] // 2 - width // 2 + off
    for tau in range(lo - 1, hi + 2):
        a = half - tau // 2
        ya = y[a : a + width]
        yb = y[a + tau : a + tau + width]
        acc = 0.0
        for j in range(width):
            diff = ya[j] - yb[j]
            acc += diff * diff
        d[tau] = acc
    best = -1
    for tau in range(lo, hi + 1):
        if d[tau] < d[tau - 1] and d[tau] <= d[tau + 1] and (best < 0 or d[tau] < d[best]):
            best = tau
    if best < 0:
        return -1.0, 1.0
    a = half - best // 2
    energy = 0.0
    for j in range(a, a + width):
        energy += y[j] * y[j] + y[j + best] * y[j + best]
    lo_v, mid, hi_v = d[best - 1], d[best], d[best + 1]
    curv = lo_v - 2.0 * mid + hi_v
    shift = 0.0
    if curv > 0.0:
        shift = min(1.0, max(-1.0, 0.5 * (lo_v - hi_v) / curv))
    return best + shift, (mid / energy if energy > 0.0 else 1.0)


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _warp(e: np.ndarray, rho: float, ew: np.ndarray) -> None:
    """``ew[m] = e(t(m))`` (cubic interpolation), ``t(m) = c + log2(1 + rho ln2 (m - c)) / rho``
    around the centre ``c``: a glide whose log2 F0 rises ``rho`` octaves per sample in ``e`` has a
    constant period (the centre's) in ``ew``. Samples mapped outside ``e`` are 0."""
    n = e.shape[0]
    c = n // 2
    k = rho * math.log(2.0)
    for m in range(n):
        arg = 1.0 + k * (m - c)
        t = c + math.log2(arg) / rho if arg > 0.0 else -1.0
        if t < 1.0 or t > n - 3.0:
            ew[m] = 0.0
            continue
        i = int(t)
        f = t - i
        p0, p1, p2, p3 = e[i - 1], e[i], e[i + 1], e[i + 2]
        ew[m] = p1 + 0.5 * f * (
            p2 - p0 + f * (2.0 * p0 - 5.0 * p1 + 4.0 * p2 - p3 + f * (3.0 * (p1 - p2) + p3 - p0))
        )


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _refine(
    buf: np.ndarray,
    start0: int,
    lowpass: np.ndarray,
    tau_min: int,
    tau_max: int,
    order: int,
    gamma: float,
    max_cents: float,
    f0: np.ndarray,
) -> None:
    """Re-estimate each voiced ``f0[k] > 0`` (Hz, in place) on the LPC-whitened frame, near its
    centre.

    Frame ``k``'s window ``buf[start0 + 256 k:][:1024]`` is low-passed as in
    :func:`_candidates` and whitened (:func:`_whiten`, order ``order``, bandwidth expansion
    ``gamma``). With ``P`` the decoded period, the lag-centred difference over ``_REFINE_PERIODS
    P`` samples around the centre is searched for its deepest minimum within ``max_cents`` of
    ``P`` (:func:`_dip`). Two probes of ``_PROBE_PERIODS P`` samples ``_PROBE_SHIFT P`` either
    side of the centre then tell a voicing boundary (one probe ``_BOUNDARY_RATIO`` times less
    periodic than the other: the span is moved ``_BOUNDARY_SHIFT P`` to the periodic side) from
    a glide (both periodic, their periods more than ``_GLIDE_CENTS`` per frame apart: the frame
    is time-warped to a constant period, :func:`_warp`, and that dip is kept when it is at
    least ``1 / _WARP_GAIN`` times deeper). The vertex replaces ``f0[k]`` (kept when there is no
    minimum); the octave and the voicing stay the decoder's.
    """
    n_lp = lowpass.shape[0]
    y = np.empty(WINDOW - n_lp + 1)
    n = y.shape[0]
    half = n // 2
    hann = np.empty(n)
    for j in range(n):
        hann[j] = 0.5 - 0.5 * math.cos(2.0 * math.pi * (j + 0.5) / n)
    yw = np.empty(n)
    e = np.empty(n)
    ew = np.empty(n)
    lpc_r = np.empty(order + 1)
    lpc_a = np.zeros(order + 1)
    lpc_prev = np.zeros(order + 1)
    d = np.empty(tau_max + 2)
    ratio = 2.0 ** (max_cents / 1200.0)
    glide_min = _GLIDE_CENTS / (1200.0 * 256.0)  # octaves per sample
    for k in range(f0.shape[0]):
        if f0[k] <= 0.0:
            continue
        period = 24000.0 / f0[k]
        lo = max(tau_min, int(period / ratio) - 1)
        hi = min(tau_max, int(period * ratio) + 2)
        if hi - lo < 2:
            continue
        frame = buf[start0 + 256 * k : start0 + 256 * k + WINDOW]
        _lowpass_frame(frame, lowpass, y)
        _whiten(y, order, gamma, hann, yw, lpc_r, lpc_a, lpc_prev, e)
        width = min(int(_REFINE_PERIODS * period), n - hi - 2)
        t, q = _dip(e, width, lo, hi, 0, d)
        if t <= 0.0:
            continue
        wp = int(_PROBE_PERIODS * period)
        dl = min(int(_PROBE_SHIFT * period), half - wp // 2 - hi // 2 - 2)
        if dl > 0:
            tl, ql = _dip(e, wp, lo, hi, -dl, d)
            tr, qr = _dip(e, wp, lo, hi, dl, d)
            if tl > 0.0 and tr > 0.0:
                if max(ql, qr) >= _BOUNDARY_RATIO * max(min(ql, qr), 1e-3):
                    off = min(int(_BOUNDARY_SHIFT * period), half - width // 2 - hi // 2 - 2)
                    if off > 0:
                        tb, _ = _dip(e, width, lo, hi, -off if ql < qr else off, d)
                        if tb > 0.0:
                            t = tb
                else:
                    rho = math.log2(tl / tr) / (2.0 * dl)
                    if abs(rho) >= glide_min:
                        _warp(e, rho, ew)
                        tw, qw = _dip(ew, width, lo, hi, 0, d)
                        if tw > 0.0 and qw < _WARP_GAIN * q:
                            t = tw
        g = 24000.0 / t
        if abs(1200.0 * math.log2(g / f0[k])) <= max_cents:
            f0[k] = g


class _CandidateTracker:
    """Analysis parameters plus the decoder state of one stream (the ``frames``/``reset``
    interface of :class:`comostream.models.f0_yin.IncrementalF0`'s tracker)."""

    def __init__(self, cfg: F0Config) -> None:
        self.cfg = cfg
        self.lowpass = _lowpass(_LOWPASS_HZ, _LOWPASS_HALF)
        self.tau_min, self.tau_max, self.width = _lags(cfg, _LOWPASS_HALF)
        self.state = np.zeros(_STATE)
        self.reset()

    def reset(self) -> None:
        kk = MAX_CANDIDATES
        self.state[:kk] = np.nan
        self.state[kk : 2 * kk] = -1e30
        self.state[2 * kk] = 0.0
        self.state[2 * kk + 1] = np.nan
        self.state[2 * kk + 2] = _MAX_GAP + 1.0

    def frames(
        self, buf: np.ndarray, start0: int, count: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """F0 (count,) float32 Hz, voiced (count,) bool, best CMNDF dip (count,) float32."""
        cand_f0 = np.zeros((count, MAX_CANDIDATES))
        cand_mass = np.zeros((count, MAX_CANDIDATES))
        cand_dn = np.ones((count, MAX_CANDIDATES))
        best_dn = np.ones(count)
        level = np.empty(count)
        f0 = np.zeros(count)
        voiced = np.zeros(count, np.bool_)
        if count:
            cfg = self.cfg
            _candidates(
                buf,
                start0,
                self.lowpass,
                self.tau_min,
                self.tau_max,
                self.width,
                cfg.yin_threshold,
                cand_f0,
                cand_mass,
                cand_dn,
                best_dn,
                level,
            )
            _decode(
                cand_f0,
                cand_mass,
                cand_dn,
                best_dn,
                level,
                _VOICING,
                cfg.silence_db,
                DECODER_PARAMS,
                self.state,
                f0,
                voiced,
            )
            _refine(
                buf,
                start0,
                self.lowpass,
                self.tau_min,
                self.tau_max,
                _REFINE_ORDER,
                _REFINE_GAMMA,
                _REFINE_CENTS,
                f0,
            )
        return f0.astype(np.float32), voiced, best_dn.astype(np.float32)


def yintrack_f0(audio_24k: np.ndarray, cfg: F0Config | None = None) -> F0Track:
    """F0 of mono 24 kHz ``audio_24k (N,)`` float: ``T = N // 256 + 1`` frames, decoded.

    ``periodicity = 1 - `` the frame's best CMNDF dip. Raises ValueError for non-1-D, non-float
    or NaN input.
    """
    cfg = cfg or F0Config()
    x = check_audio(audio_24k)
    t_frames = n_frames(x.shape[0])
    buf = np.zeros(x.shape[0] + WINDOW)
    buf[LOOKAHEAD_SAMPLES : LOOKAHEAD_SAMPLES + x.shape[0]] = x
    f0, voiced, dn = _CandidateTracker(cfg).frames(buf, 0, t_frames)
    return F0Track(f0, voiced, 1.0 - dn)


class IncrementalYinTrack(IncrementalF0):
    """Streaming :func:`yintrack_f0`: ``push(chunk)`` -> ``(f0 (k,), voiced (k,))``; the
    concatenation over any chunking plus ``flush()`` equals ``yintrack_f0``.

    Frame ``t`` is returned by the push that delivers sample ``256 t + 511``
    (``lookahead_samples = 512``); the decoding is causal (``lookahead_frames = 0``).
    """

    def __init__(self, cfg: F0Config | None = None, capacity: int = 4096) -> None:
        super().__init__(cfg, capacity)
        self._tracker = _CandidateTracker(self.cfg)  # type: ignore[assignment]
        self.reset()
