"""Turns the `BENCH` JSON lines gathered by bench/run.sh into the markdown table of RESULTS.md."""

import datetime
import json
import os
import platform
import sys


def load(path):
    by_kind = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                d = json.loads(line)
                by_kind.setdefault(d["kind"], []).append(d)
    return by_kind


def fmt(x, digits=1):
    return f"{x:,.{digits}f}"


def spread(values):
    """The median, min and max of `values` (the median of an even count is the mean of the two)."""
    s = sorted(values)
    n = len(s)
    mid = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    return mid, s[0], s[-1]


def ratio_text(ratios, digits=2, unit="×"):
    """`median× (min–max, N runs)`: the rounds' ratios, so one run's noise shows as a range."""
    mid, lo, hi = spread(ratios)
    if len(ratios) == 1:
        return f"{mid:.{digits}f}{unit} (1 run)"
    return f"{mid:.{digits}f}{unit} ({lo:.{digits}f}–{hi:.{digits}f}, {len(ratios)} runs)"


def verdict(ratios, goal, higher_is_better=True):
    """Judged on the median; says so when some round fell on the other side of the goal."""
    if not isinstance(ratios, list):
        ratios = [ratios]
    ok = (lambda x: x >= goal) if higher_is_better else (lambda x: x <= goal)
    mid, lo, hi = spread(ratios)
    if ok(lo) and ok(hi):
        return "met"
    if ok(mid):
        return "met (median; not every run)"
    return "**not met**"


def rounds(k, kind):
    """The lines of `kind` in round order."""
    return sorted(k.get(kind, []), key=lambda d: d.get("round", 0))


def median_of(lines, key):
    return spread([d[key] for d in lines])[0]


def main():
    lines, out = sys.argv[1], sys.argv[2]
    k = load(lines)
    rows = []

    candle = rounds(k, "train_candle")
    torch = rounds(k, "train_torch")
    if candle and torch:
        pairs = list(zip(candle, torch))
        ratios = [c["images_per_s"] / t["images_per_s"] for c, t in pairs]
        rows.append(("1. Training, `small`, batch 16, f32, CPU",
                     f"{fmt(median_of(candle, 'images_per_s'))} images/s (candle)",
                     f"{fmt(median_of(torch, 'images_per_s'))} images/s ({torch[0]['framework']})",
                     ratio_text(ratios), "≥ 1.5×", verdict(ratios, 1.5)))
    elif candle:
        rows.append(("1. Training, `small`", f"{fmt(median_of(candle, 'images_per_s'))} images/s",
                     "PyTorch not run", "–", "≥ 1.5×", "not measured"))

    for s in k.get("save", []):
        # Per round: [our ms, plain ms]; MB/s ratios are the inverse ratios of the times.
        per_round = s.get("rounds_ms") or [[s["save_ms"], s["megabytes"] / s["plain_mb_s"] * 1e3]]
        ratios = [plain / ours for ours, plain in per_round]
        rows.append((f"2. LoRA checkpoint save, {s['megabytes']:.1f} MB, fsync'd",
                     f"{fmt(s['save_mb_s'], 0)} MB/s ({fmt(s['save_ms'])} ms)",
                     f"{fmt(s['plain_mb_s'], 0)} MB/s (plain write + fsync)",
                     ratio_text(ratios), "≥ 0.8×", verdict(ratios, 0.8)))
    saves = k.get("save", [])
    epoch_seconds = [c["epoch_seconds"] for c in candle if c.get("epoch_seconds")]
    if epoch_seconds and saves:
        one = min(saves, key=lambda s: abs(s["megabytes"] - 1.0))
        epoch = spread(epoch_seconds)[0]
        stall = one["save_ms"] / 1000 / epoch
        rows.append(("2. Training stall per save (`small`)",
                     f"{fmt(one['save_ms'])} ms per save",
                     f"{fmt(epoch, 2)} s per epoch",
                     f"{stall * 100:.2f} %", "< 5 %", verdict(stall, 0.05, False)))

    listing = k.get("listing", [None])[0]
    if listing:
        rows.append((f"2. `list_all_runs`, {listing['runs']:,} runs",
                     f"{fmt(listing['median_ms'])} ms", "–", "–", "–", "info"))

    disk = k.get("disk", [None])[0]
    if disk:
        mib = lambda b: f"{b / 2**20:.1f} MiB"
        r = disk["ours_bytes"] / disk["seed_scheme_bytes"]
        rows.append((f"3. Disk, {disk['runs']} runs × {disk['epochs']} epochs, keep_last_n {disk['keep_last_n']}",
                     mib(disk["ours_bytes"]),
                     f"{mib(disk['seed_scheme_bytes'])} (seed: base per run, best/last copies)",
                     f"{r:.2f}×", "≤ 0.4×", verdict(r, 0.4, False)))
        r = disk["ours_bytes"] / disk["full_model_per_epoch_bytes"]
        rows.append(("3. Disk, same runs", mib(disk["ours_bytes"]),
                     f"{mib(disk['full_model_per_epoch_bytes'])} (full model per epoch)",
                     f"{r:.2f}×", "–", "info"))

    browser = rounds(k, "browser_step")
    click = rounds(k, "browser_click")
    # The goal (≤ 1.2×) is judged against native sampling at the page's thread count (its pool
    # of workers, one per core the browser reports); the other native configuration is info.
    natives = []
    for kind, label in [("native_step", "native, {} threads"), ("native_step_1t", "native, 1 thread")]:
        lines_of = rounds(k, kind)
        if lines_of:
            natives.append((lines_of, label.format(lines_of[0]["threads"])))
    if browser:
        page_threads = browser[0].get("threads")
        natives.sort(key=lambda pair: pair[0][0]["threads"] != page_threads)
        for native, label in natives:
            same = native[0]["threads"] == page_threads
            ratios = [b["step_ms"] / n["step_ms"] for b, n in zip(browser, native)]
            title = (f"4. DDIM step, `small`, 1 image, {native[0]['steps']} steps, same thread count" if same
                     else "4. DDIM step, same, native on another thread count")
            rows.append((title,
                         f"{fmt(median_of(browser, 'step_ms'), 2)} ms (headless Chromium, wasm, "
                         f"{page_threads} worker threads)",
                         f"{fmt(median_of(native, 'step_ms'), 2)} ms ({label})",
                         ratio_text(ratios), "≤ 1.2×" if same else "–",
                         verdict(ratios, 1.2, False) if same else "info"))
        stalls = [b["stall_ms"] for b in browser if b.get("stall_ms") is not None]
        if stalls:
            mid, lo, hi = spread(stalls)
            rows.append(("4. Page stall while sampling (timer lateness, worst per run)",
                         f"{fmt(mid, 0)} ms (median; {fmt(lo, 0)}–{fmt(hi, 0)}, {len(stalls)} runs)",
                         "sampling on the page's thread would stall it a whole step or more",
                         "–", "–", "info"))
    if click:
        mid, lo, hi = spread([c["click_to_image_ms"] for c in click])
        rows.append((f"4. Click → finished image, `small`, {click[0]['steps']} steps, base beside it",
                     f"{fmt(mid, 0)} ms" + (f" (median; {fmt(lo, 0)}–{fmt(hi, 0)}, {len(click)} runs)" if len(click) > 1 else ""),
                     "fresh profile: downloads included", "–", "–", "info"))

    server = k.get("server", [None])[0]
    if server:
        ours = server.get("server_rps_rounds") or [server["server_rps"]]
        theirs = server.get("nginx_rps_rounds") or [server["nginx_rps"]]
        ratios = [a / b for a, b in zip(ours, theirs)]
        rows.append((f"5. `GET /api/runs`, {server['runs']:,} runs ({server['body_bytes'] / 1e6:.1f} MB JSON)",
                     f"{fmt(spread(ours)[0])} req/s (diffit-server)",
                     f"{fmt(spread(theirs)[0])} req/s (nginx, same JSON from a file)",
                     ratio_text(ratios), "–", "info"))
        rows.append((f"5. Peak RSS streaming a {server['stream_bytes'] / 2**30:.0f} GiB checkpoint",
                     f"{server['stream_peak_rss_kib'] / 1024:.1f} MiB", "–", "–", "flat", "info"))
    table = rounds(k, "runs_table")
    if table:
        small_n = min(d["runs"] for d in table)
        large_n = max(d["runs"] for d in table)
        small = [d for d in table if d["runs"] == small_n]
        large = [d for d in table if d["runs"] == large_n]
        for key, what in [("first_rows_ms", "navigation → first 100 rows"),
                          ("search_ms", "search `lr<3e-4 tag:sweep` → rows"),
                          ("clear_ms", "search cleared → rows"),
                          ("sort_ms", "sort by a config column → rows"),
                          ("next_page_ms", "next page → rows")]:
            ratios = [l[key] / s[key] for l, s in zip(large, small)]
            mid, lo, hi = spread([d[key] for d in large])
            rows.append((f"4. Runs view, {large_n:,} runs: {what}",
                         f"{fmt(mid, 0)} ms ({fmt(lo, 0)}–{fmt(hi, 0)})",
                         f"{fmt(median_of(small, key), 0)} ms at {small_n:,} runs",
                         ratio_text(ratios), "≤ 100 ms" if key != "first_rows_ms" else "–",
                         verdict(mid, 100.0, False) if key != "first_rows_ms" else "info"))

    listed = k.get("bucket_listing", [None])[0]
    if listed:
        secs = listed["bucket_ms"] / 1000
        unindexed = listed.get("unindexed_ms")
        without = f"; {fmt(unindexed)} ms reading every metadata.json" if unindexed else ""
        rows.append((f"6. Listing {listed['runs']:,} runs in a bucket (moto, loopback)",
                     f"{fmt(listed['bucket_ms'])} ms (`remote::list_runs`, run index{without})",
                     f"{fmt(listed['local_ms'])} ms (the same runs on disk)",
                     ratio_text([b / d for b, d in listed.get("rounds_ms") or [[listed["bucket_ms"], listed["local_ms"]]]], 1),
                     "< 2 s",
                     verdict(secs, 2.0, False)))
    stall = k.get("mirror_stall", [None])[0]
    if stall:
        share = stall["longest_wait_ms"] / 1000 / stall["epoch_seconds"]
        rows.append(("6. Stall per save with `--mirror s3://…`, `small`",
                     f"{fmt(stall['longest_wait_ms'])} ms (the longest a save waited)",
                     f"{fmt(stall['epoch_seconds'], 2)} s epoch",
                     f"{share * 100:.2f} %", "< 5 %", verdict(share, 0.05, False)))
    stored = k.get("bucket_bytes", [None])[0]
    if stored:
        mib = lambda b: f"{b / 2**20:.1f} MiB"
        rows.append((f"6. Bytes, {stored['runs']} runs × 10 epochs in a bucket",
                     mib(stored["bucket_bytes"]),
                     f"{mib(stored['disk_bytes'])} (on disk: base shared, best/last links)",
                     f"{stored['bucket_bytes'] / stored['disk_bytes']:.2f}×", "–", "info"))

    # The GPU figures come from `make gpu-check` (scripts/gpu-check.sh) on a machine with an
    # NVIDIA GPU, which writes target/gpu-check.md; they are appended below the table.
    gpu_check = os.environ.get("GPU_CHECK", "target/gpu-check.md")
    gpu_text = None
    if os.path.exists(gpu_check):
        with open(gpu_check, encoding="utf-8") as f:
            gpu_text = f.read().strip()
        rows.append(("7. GPU training (`--device cuda`)", "see below", "scripts/gpu-check.sh",
                     "–", "–", "info"))
    else:
        rows.append(("7. GPU training (`--device cuda`)", "not measured",
                     "no GPU here: `make gpu-check` on one writes the figures", "–", "–", "n/a"))

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        "# Benchmarks",
        "",
        f"Produced by `make bench` (bench/run.sh) on {when}: {os.cpu_count()} × {cpu}, "
        f"{platform.system()} {platform.release()}. Every ratio compares two things measured in "
        "the same run on the same machine; where both sides vary, it is the median of the ratios "
        "of alternating rounds (ours, then the reference), with their min–max, and a goal is "
        "judged on the median. Byte counts are exact and measured once. Regenerate with "
        "`make bench`.",
        "",
        "| Measure | Ours | Reference | Ratio | Goal | |",
        "|---|---|---|---|---|---|",
    ]
    body = [f"| {' | '.join(r)} |" for r in rows]
    if gpu_text:
        body += ["", "## GPU", "", gpu_text]
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(head + body) + "\n")
    print("\n".join(head + body))


if __name__ == "__main__":
    main()
