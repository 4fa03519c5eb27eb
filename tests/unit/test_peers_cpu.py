"""The peers scenario's CPU accounting (bench/peers.py ``CpuSampler.between``)
on made-up samples: a process's CPU counts from the window's start (from zero
if it appeared later) to the first sample at or after its end (or its last
sample, if it ended earlier). Pure: no run, no service."""

from __future__ import annotations

from bench.peers import CpuSampler


def _sampler(samples):
    sampler = CpuSampler.__new__(CpuSampler)  # no thread, no database
    sampler.samples = samples
    return sampler


def test_a_process_alive_through_the_window_counts_its_difference():
    sampler = _sampler(
        [
            (0.0, {1: ("workers", 5.0), 2: ("postgresql", 1.0)}),
            (1.0, {1: ("workers", 6.0), 2: ("postgresql", 1.5)}),
            (2.0, {1: ("workers", 8.0), 2: ("postgresql", 2.5)}),
            (3.0, {1: ("workers", 20.0), 2: ("postgresql", 9.0)}),
        ]
    )
    assert sampler.between(0.5, 2.0) == {"workers": 3.0, "postgresql": 1.5}


def test_a_process_seen_first_in_the_window_counts_from_zero():
    sampler = _sampler(
        [
            (0.0, {1: ("workers", 5.0)}),
            (1.0, {1: ("workers", 6.0), 7: ("postgresql", 0.25)}),
            (2.0, {1: ("workers", 7.0), 7: ("postgresql", 0.75)}),
        ]
    )
    assert sampler.between(0.0, 2.0) == {"workers": 2.0, "postgresql": 0.75}


def test_a_process_gone_in_the_window_counts_until_last_seen():
    sampler = _sampler(
        [
            (0.0, {1: ("workers", 5.0), 3: ("postgresql", 2.0)}),
            (1.0, {1: ("workers", 6.0), 3: ("postgresql", 2.5)}),
            (2.0, {1: ("workers", 7.0)}),
        ]
    )
    assert sampler.between(0.0, 2.0) == {"workers": 2.0, "postgresql": 0.5}


def test_samples_after_the_window_do_not_count():
    sampler = _sampler(
        [
            (0.0, {1: ("workers", 0.0)}),
            (1.0, {1: ("workers", 1.0)}),
            (5.0, {1: ("workers", 9.0)}),
        ]
    )
    assert sampler.between(0.0, 0.9) == {"workers": 1.0, "postgresql": 0.0}
