"""metrics.MemoryMonitor: RSS at every sample, PSS (costly: the kernel walks every page table) at
the first sample and then once pss_every_s has passed; peaks kept."""

from repirl_ray import metrics


class FakeProcess:
    def __init__(self, rss: int, pss: int, calls: list):
        self.rss, self.pss, self.calls = rss, pss, calls

    def memory_info(self):
        self.calls.append("rss")
        return type("Mem", (), {"rss": self.rss})()

    def memory_full_info(self):
        self.calls.append("pss")
        return type("F", (), {"pss": self.pss})()


def monitor_of(monkeypatch, sizes: list, calls: list, now: list) -> metrics.MemoryMonitor:
    """A monitor over processes of the (rss, pss) bytes in `sizes`, at the time in now[0]."""
    monkeypatch.setattr(metrics, "_ray_processes", lambda whole_node: [FakeProcess(r, p, calls) for r, p in sizes])
    return metrics.MemoryMonitor(clock=lambda: now[0])


def test_pss_is_read_at_the_start_and_then_every_pss_every_s(monkeypatch):
    calls: list = []
    now = [100.0]
    monitor = monitor_of(monkeypatch, [(2**30, 2**29)], calls, now)
    seen = []
    for t in (100.0, 101.0, 110.0, 129.0, 130.0, 131.0, 159.0, 160.5):
        now[0] = t
        calls.clear()
        monitor.sample()
        seen.append((t, calls.count("rss"), calls.count("pss")))
    assert seen == [(100.0, 1, 1), (101.0, 1, 0), (110.0, 1, 0), (129.0, 1, 0), (130.0, 1, 1), (131.0, 1, 0),
                    (159.0, 1, 0), (160.5, 1, 1)]
    assert monitor.peak_gib == 1.0 and monitor.peak_pss_gib == 0.5


def test_peaks_are_the_largest_readings_and_current_the_last(monkeypatch):
    sizes = [(2**30, 2**30)]
    now = [0.0]
    monitor = monitor_of(monkeypatch, sizes, [], now)
    monitor.sample()  # 1 GiB, PSS 1 GiB
    sizes[:] = [(3 * 2**30, 2 * 2**30), (2**30, 2**30)]
    now[0] = 1.0
    monitor.sample()  # 4 GiB RSS; no PSS reading yet
    assert (monitor.current_gib, monitor.peak_gib, monitor.peak_pss_gib) == (4.0, 4.0, 1.0)
    sizes[:] = [(2**30, 2**29)]
    now[0] = 31.0
    monitor.sample()  # PSS read again (30 s on): 0.5 GiB; the 3 GiB between readings went unseen
    assert (monitor.current_gib, monitor.peak_gib, monitor.peak_pss_gib) == (1.0, 4.0, 1.0)


def test_a_reading_asked_with_pss_takes_it_whenever_it_comes(monkeypatch):
    """The driver asks for one before the run's summary (driver.py): the first reading of a short
    run came before the actors had loaded their models."""
    sizes = [(2**30, 2**29)]
    now = [0.0]
    monitor = monitor_of(monkeypatch, sizes, [], now)
    monitor.sample()  # PSS 0.5 GiB at the start
    sizes[:] = [(2**31, 3 * 2**29)]  # the actors have loaded: PSS 1.5 GiB, 5 s later
    now[0] = 5.0
    monitor.sample()
    assert monitor.peak_pss_gib == 0.5
    monitor.sample(with_pss=True)
    assert monitor.peak_pss_gib == 1.5 and monitor.peak_gib == 2.0
