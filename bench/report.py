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


def verdict(ratio, goal, higher_is_better=True):
    ok = ratio >= goal if higher_is_better else ratio <= goal
    return "met" if ok else "**not met**"


def main():
    lines, out = sys.argv[1], sys.argv[2]
    k = load(lines)
    rows = []

    candle = k.get("train_candle", [None])[0]
    torch = k.get("train_torch", [None])[0]
    if candle and torch:
        r = candle["images_per_s"] / torch["images_per_s"]
        rows.append(("1. Training, `small`, batch 16, f32, CPU",
                     f"{fmt(candle['images_per_s'])} images/s (candle)",
                     f"{fmt(torch['images_per_s'])} images/s ({torch['framework']})",
                     f"{r:.2f}×", "≥ 1.0×", verdict(r, 1.0)))
    elif candle:
        rows.append(("1. Training, `small`", f"{fmt(candle['images_per_s'])} images/s",
                     "PyTorch not run", "–", "≥ 1.0×", "not measured"))

    for s in k.get("save", []):
        r = s["save_mb_s"] / s["plain_mb_s"]
        rows.append((f"2. LoRA checkpoint save, {s['megabytes']:.1f} MB, fsync'd",
                     f"{fmt(s['save_mb_s'], 0)} MB/s ({fmt(s['save_ms'])} ms)",
                     f"{fmt(s['plain_mb_s'], 0)} MB/s (plain write + fsync)",
                     f"{r:.2f}×", "≥ 0.8×", verdict(r, 0.8)))
    saves = k.get("save", [])
    if candle and saves and candle.get("epoch_seconds"):
        one = min(saves, key=lambda s: abs(s["megabytes"] - 1.0))
        stall = one["save_ms"] / 1000 / candle["epoch_seconds"]
        rows.append(("2. Training stall per save (`small`)",
                     f"{fmt(one['save_ms'])} ms per save",
                     f"{fmt(candle['epoch_seconds'], 2)} s per epoch",
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

    native = k.get("native_step", [None])[0]
    browser = k.get("browser_step", [None])[0]
    click = k.get("browser_click", [None])[0]
    native1 = k.get("native_step_1t", [None])[0]
    # The goal is judged against the faster native configuration; the other one is info.
    natives = [(n, f"native, {n['threads']} threads") for n in [native] if n]
    natives += [(n, "native, 1 thread, as the page") for n in [native1] if n]
    natives.sort(key=lambda pair: pair[0]["step_ms"])
    if browser:
        for i, (n, label) in enumerate(natives):
            r = browser["step_ms"] / n["step_ms"]
            title = (f"4. DDIM step, `small`, 1 image, {n['steps']} steps" if i == 0
                     else "4. DDIM step, same, slower native configuration")
            rows.append((title,
                         f"{fmt(browser['step_ms'], 2)} ms (headless Chromium, wasm)",
                         f"{fmt(n['step_ms'], 2)} ms ({label})",
                         f"{r:.2f}×", "≤ 2×" if i == 0 else "–",
                         verdict(r, 2.0, False) if i == 0 else "info"))
    if click:
        rows.append((f"4. Click → finished image, `small`, {click['steps']} steps, base beside it",
                     f"{fmt(click['click_to_image_ms'], 0)} ms", "fresh profile: downloads included",
                     "–", "–", "info"))

    server = k.get("server", [None])[0]
    if server:
        r = server["server_rps"] / server["nginx_rps"]
        rows.append((f"5. `GET /api/runs`, {server['runs']:,} runs ({server['body_bytes'] / 1e6:.1f} MB JSON)",
                     f"{fmt(server['server_rps'])} req/s (diffit-server)",
                     f"{fmt(server['nginx_rps'])} req/s (nginx, same JSON from a file)",
                     f"{r:.2f}×", "–", "info"))
        rows.append((f"5. Peak RSS streaming a {server['stream_bytes'] / 2**30:.0f} GiB checkpoint",
                     f"{server['stream_peak_rss_kib'] / 1024:.1f} MiB", "–", "–", "flat", "info"))

    listed = k.get("bucket_listing", [None])[0]
    if listed:
        secs = listed["bucket_ms"] / 1000
        unindexed = listed.get("unindexed_ms")
        without = f"; {fmt(unindexed)} ms reading every metadata.json" if unindexed else ""
        rows.append((f"6. Listing {listed['runs']:,} runs in a bucket (moto, loopback)",
                     f"{fmt(listed['bucket_ms'])} ms (`remote::list_runs`, run index{without})",
                     f"{fmt(listed['local_ms'])} ms (the same runs on disk)",
                     f"{listed['bucket_ms'] / listed['local_ms']:.1f}×", "< 2 s",
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
        "the same run on the same machine. Regenerate with `make bench`.",
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
