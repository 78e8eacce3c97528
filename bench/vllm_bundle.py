"""The offline vLLM bundle for the lent GPU host: a slimmed vllm 0.26.0 wheel and its dependency wheels, in two parts.

    python3 -m bench.vllm_bundle --out .vl [--work /tmp/vllm_bundle_work]

What it builds, from PyPI (about 0.3 GB downloaded, 2-4 minutes, mostly LZMA):
  OUT/part1/  the first 52 MiB of the rebuilt vllm wheel (vllm-0.26.0-...whl.part-aa)
  OUT/part2/  the rest of it (.part-ab), vllm-whl.sha256, install.sh, the dependency wheels (*.whl) and
              optional/typing_extensions, which install.sh adds only where the machine's own is too old
  OUT/README.txt  what was removed, patched and left out, with this build's sizes and versions

Why: the GPU host (CPython 3.12, x86_64, torch 2.11.0+cu130 preinstalled) reaches no package registry, and a call
carries at most 64 MiB. The PyPI wheel is 304 MB, so the build
  - drops files vllm loads only conditionally (FA2, FA4, the MoE ops, the Rust frontend, DeepGEMM, two
    model-specific kernels): 0.26.0 builds against CUDA 13 and pins torch==2.11.0, so the FA3 and _C kernels that
    stay run on the host's own torch, which must stay (no torch, triton, flashinfer or nvidia-* wheel is carried);
  - patches two imports so that the missing flashinfer and an older protobuf cannot stop the server;
  - stores every member with ZIP_LZMA (preset 9e, dictionary up to 64 MiB; FA3 153 MB -> 8 MB) and regenerates
    RECORD; the dependency wheels are repacked the same way where that saves 3 % or more (their RECORD is untouched);
  - splits the wheel so that each part stays under 58 MiB.

Install there, in two calls (a warm machine keeps what the first call left):
  1. carrying .vl/part1:  cp -r .vl/part1 /tmp/p1
  2. carrying .vl/part2:  bash .vl/part2/install.sh /tmp/p1 .vl/part2 /tmp/vsite
     (joins the parts, checks the sha256, `pip install --no-index --no-deps --target /tmp/vsite` of all wheels)
Run with
  PYTHONPATH=/tmp/vsite VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1 \\
      python3 -m vllm.entrypoints.cli.main serve MODEL --attention-backend FLASH_ATTN ...
(VLLM_USE_FLASHINFER_SAMPLER=0 because flashinfer is not carried; VLLM_USE_RUST_FRONTEND must stay unset.)

Dense models only: the MoE kernels (_moe_C) are dropped, and so are FA2-only features (ALiBi), FA4, DeepGEMM FP8,
the flashinfer backends and the Rust frontend. Checked on the host with Qwen3-VL-4B (bf16, FA3) on 2026-12-04.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import dataclasses
import hashlib
import io
import lzma
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

MiB = 1 << 20

VLLM_REQUIREMENT = "vllm==0.26.0"
VLLM_WHEEL = "vllm-0.26.0-cp38-abi3-manylinux_2_28_x86_64.whl"

# The host: CPython 3.12 on x86_64 Ubuntu 24.04 (glibc 2.39). Markers are evaluated for it, not for this machine.
TARGET_MARKERS = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_version": "3.12.3",
    "implementation_name": "cpython", "platform_python_implementation": "CPython",
    "platform_system": "Linux", "platform_machine": "x86_64", "sys_platform": "linux", "os_name": "posix",
    "platform_release": "", "platform_version": "",
}
# In pip's order of preference; manylinux_2_31 only where it is the sole wheel (see EXTRA_PLATFORMS), so that every
# other package resolves to the same wheel as the build the host was checked with.
TARGET_PLATFORMS = [
    "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_27_x86_64",
    "manylinux_2_26_x86_64", "manylinux_2_24_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64", "linux_x86_64",
]
# llguidance is needed at import time (a class annotation in backend_guidance.py), and its only 1.7.x wheel is
# manylinux_2_31.
EXTRA_PLATFORMS = {"llguidance": ["manylinux_2_31_x86_64"]}

# Already in the host's image (the device tool's list): never carried, so its torch and friends stay.
PREINSTALLED = set(map(canonicalize_name, " ".join(
    line for line in (Path(__file__).parent / "host_image.txt").read_text().splitlines()
    if not line.startswith("#")).split()))
# GPU packages vllm lists but a dense bf16 FLASH_ATTN model never imports (all lazy: inside functions or behind
# has_*/find_spec), plus any nvidia-*/cupy* wheel: they would be large and could fight the image's CUDA stack.
LEFT_OUT_GPU = set(map(canonicalize_name, """
    xformers flashinfer-python flashinfer-cubin flashinfer-jit-cache torchcodec pynvvideocodec tilelang
    nvidia-cudnn-frontend fastsafetensors nvidia-cutlass-dsl nvidia-cutlass-dsl-libs-base nvidia-cutlass-dsl-libs-cu13
    quack-kernels tokenspeed-mla humming-kernels
""".split()))
LEFT_OUT_GPU_PREFIXES = ("nvidia-", "cupy")
# Never imported by vllm serve: the anthropic SDK (vllm's /v1/messages has its own protocol classes) and the
# `fastapi` command that fastapi[standard] pulls in.
LEFT_OUT_UNUSED = set(map(canonicalize_name, """
    anthropic docstring-parser fastapi-cli fastapi-cloud-cli rich-toolkit rignore fastar sentry-sdk agent-detector
    detect-installer
""".split()))
# vllm pins apache-tvm-ffi==0.1.10, and xgrammar>=0.2.8 needs tvm-ffi>=0.1.11 (0.2.9 with 0.1.10 failed in
# load_lib_module(extra_lib_paths=...)), so xgrammar stays at the last release that works with 0.1.10.
PINS = {"xgrammar": "==0.2.7"}
# pydantic 2.14 / pydantic-core 2.50 need typing_extensions>=4.16.0; install.sh adds this one where the host's is
# older (the version is also written in INSTALL_SH).
OPTIONAL_WHEEL = "typing_extensions==4.16.0"

# Loaded only conditionally (README.txt says where each is guarded); paths ending in / are folders.
DROPPED_FROM_VLLM = [
    "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so",  # FA2 (298 MB): try/except import; FA3 is chosen on SM90
    "vllm/vllm_flash_attn/cute/",  # FA4: FA4_AVAILABLE = os.path.exists(cute/interface.py)
    "vllm/_moe_C_stable_libtorch.abi3.so",  # MoE ops (46 MB): imported inside suppress(ImportError)
    "vllm/vllm-rs",  # Rust frontend (42 MB): only with VLLM_USE_RUST_FRONTEND=1
    "vllm/third_party/deep_gemm/",  # 35 MB: has_deep_gemm() is a find_spec
    "vllm/third_party/fmha_sm100/",  # SM100, MiniMax-M3 only, imported lazily
    "vllm/third_party/tml_fa4/",  # inkling model only
]

SAMPLER_PY = "vllm/v1/sample/ops/topk_topp_sampler.py"
OTEL_PY = "vllm/tracing/otel.py"
# (member, exact text, replacement). flashinfer_sampler_supported() imports the flashinfer backend, whose module
# imports flashinfer at the top, so a forgotten VLLM_USE_FLASHINFER_SAMPLER=0 would crash the sampler's set-up.
# otel.py: googleapis-common-protos 1.76 is protobuf 6.33 gencode and raises VersionError (not ImportError) under
# an older protobuf (5.29 is allowed by vllm); tracing should then report itself unavailable, not stop the server.
PATCHES = [
    (
        SAMPLER_PY,
        "    from vllm.v1.attention.backends.flashinfer import FlashInferBackend\n",
        "    try:\n"
        "        from vllm.v1.attention.backends.flashinfer import FlashInferBackend\n"
        "    except ImportError as e:  # slim bundle: flashinfer-python not shipped\n"
        "        logger.warning_once(\n"
        '            "FlashInfer top-p/top-k sampling unavailable (%r); falling back.", e\n'
        "        )\n"
        "        return False\n",
    ),
    (
        OTEL_PY,
        "except ImportError:\n    _IS_OTEL_AVAILABLE = False\n",
        "except Exception:  # slim bundle: also tolerate protobuf gencode VersionError\n"
        "    _IS_OTEL_AVAILABLE = False\n",
    ),
]

PART1_BYTES = 52 * MiB  # as `split -b 52M`: part1 holds only this, part2 the rest of the wheel and all the others
PART_LIMIT_BYTES = 58 * MiB  # a call carries 64 MiB; the margin is for whatever else the call brings
LZMA_MIN_SAVING = 0.97  # a dependency wheel is repacked only if LZMA makes it at least 3 % smaller

# Copied from the bundle the host installed from on 2026-12-04. A backslash at a line's end continues it (keeps the
# source under 120 columns; the written file has the original long lines).
INSTALL_SH = """\
#!/usr/bin/env bash
# usage: bash install.sh /path/to/part1 /path/to/part2 [/tmp/vsite]
set -euo pipefail
shopt -s nullglob
P1=$(cd "${1:?part1 dir}" && pwd); P2=$(cd "${2:?part2 dir}" && pwd); SITE=${3:-/tmp/vsite}
W=vllm-0.26.0-cp38-abi3-manylinux_2_28_x86_64.whl
WD=$(mktemp -d)
cat "$P1/$W.part-aa" "$P2/$W.part-ab" > "$WD/$W"
(cd "$WD" && sha256sum -c "$P2/vllm-whl.sha256")
DEPS=("$P1"/*.whl "$P2"/*.whl)
# pydantic 2.14 / pydantic-core 2.50 need typing_extensions>=4.16.0; add the bundled one only if the
# machine's own is older (it then shadows the site-packages copy via PYTHONPATH; newer is backward compatible).
if ! python3 -c "import sys, importlib.metadata as m; from packaging.version import Version as V; \
sys.exit(V(m.version('typing_extensions')) < V('4.16.0'))"; then
  echo "typing_extensions < 4.16.0 on this machine: adding bundled typing_extensions 4.16.0"
  DEPS+=("$P2"/optional/*.whl)
fi
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WD/$W" "${DEPS[@]}"
rm -rf "$WD"
echo "installed into $SITE; run: PYTHONPATH=$SITE VLLM_USE_FLASHINFER_SAMPLER=0 \
python3 -m vllm.entrypoints.cli.main serve MODEL ..."
"""


# ---- downloading -------------------------------------------------------------------------------------------------

def pip_download(requirement: str, dest: Path, extra_platforms: list[str] | None = None) -> Path:
    """One wheel for the host (no dependencies) into dest; returns its path."""
    platforms = TARGET_PLATFORMS + (extra_platforms or [])
    target_args = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
                   "--abi", "none", "--only-binary=:all:"]
    for platform in platforms:
        target_args += ["--platform", platform]
    dest.mkdir(parents=True, exist_ok=True)
    # A folder of its own, so the one wheel found there is the one this call chose.
    with tempfile.TemporaryDirectory(dir=dest) as fresh:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", fresh, *target_args, requirement]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"pip download {requirement} failed:\n{done.stderr[-2000:]}")
        (wheel,) = Path(fresh).glob("*.whl")
        return wheel.replace(dest / wheel.name)


def wheel_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return archive.read(name).decode()


def requirements_for_host(metadata: str, extras: set[str]) -> Iterator[Requirement]:
    """The Requires-Dist lines that apply on the host, with the given extras of this package asked for."""
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = Requirement(line.split(":", 1)[1].strip())
        marker = requirement.marker
        if marker is None or any(marker.evaluate({**TARGET_MARKERS, "extra": extra}) for extra in ["", *extras]):
            yield requirement


def is_left_out(name: str) -> bool:
    return (name in PREINSTALLED or name in LEFT_OUT_GPU or name in LEFT_OUT_UNUSED
            or name.startswith(LEFT_OUT_GPU_PREFIXES))


@dataclasses.dataclass
class Resolution:
    """Newest wheel per package that satisfies every requirement seen so far (no backtracking: vllm's tree
    does not need it)."""

    dest: Path
    specifiers: dict[str, SpecifierSet] = dataclasses.field(default_factory=dict)
    extras: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    wheels: dict[str, Path] = dataclasses.field(default_factory=dict)
    queue: list[str] = dataclasses.field(default_factory=list)
    left_out: dict[str, set[str]] = dataclasses.field(default_factory=dict)  # package -> who asked for it

    def require(self, requirement: Requirement, asked_by: str) -> None:
        name = canonicalize_name(requirement.name)
        if is_left_out(name):
            self.left_out.setdefault(name, set()).add(asked_by)
            return
        self.specifiers[name] = self.specifiers.get(name, SpecifierSet()) & requirement.specifier
        known_extras = self.extras.setdefault(name, set())
        new_extras = set(requirement.extras) - known_extras
        known_extras |= new_extras
        chosen = self.wheels.get(name)
        if chosen is not None:
            if self.specifiers[name].contains(wheel_version(chosen), prereleases=True):
                if not new_extras:
                    return
            else:  # a later requirement rules the chosen version out: fetch again
                chosen.unlink()
                del self.wheels[name]
        if name not in self.queue:
            self.queue.append(name)

    def settle(self, name: str) -> None:
        if name not in self.wheels:
            self.wheels[name] = pip_download(name + str(self.specifiers[name]), self.dest, EXTRA_PLATFORMS.get(name))
            print(f"  {self.wheels[name].name}", flush=True)
        for requirement in requirements_for_host(wheel_metadata(self.wheels[name]), self.extras[name]):
            self.require(requirement, name)


def wheel_version(wheel: Path) -> Version:
    return parse_wheel_filename(wheel.name)[1]


def resolve_dependencies(vllm_wheel: Path, dest: Path) -> Resolution:
    """vllm's dependency wheels for the host, breadth first from vllm's METADATA (no extras)."""
    resolution = Resolution(dest)
    for name, specifier in PINS.items():
        resolution.specifiers[name] = SpecifierSet(specifier)
    for requirement in requirements_for_host(wheel_metadata(vllm_wheel), set()):
        resolution.require(requirement, "vllm")
    while resolution.queue:
        resolution.settle(resolution.queue.pop(0))
    return resolution


# ---- repacking with LZMA -----------------------------------------------------------------------------------------

class SizedLzmaCompressor:
    """What zipfile's own LZMA member compressor writes (the 4-byte zip LZMA header, then raw LZMA1), but with
    preset 9e and a dictionary as large as the member (64 KiB to 64 MiB) instead of preset 6's 8 MiB: the CUDA
    kernels repeat over tens of MB, which is what takes FA3 from 153 MB to 8 MB."""

    def __init__(self, member_bytes: int) -> None:
        dict_size = 1 << 16
        while dict_size < member_bytes and dict_size < 64 * MiB:
            dict_size <<= 1
        wanted = {"id": lzma.FILTER_LZMA1, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": dict_size}
        properties: bytes = lzma._encode_filter_properties(wanted)  # type: ignore[attr-defined]
        # Compress with the filter as the header describes it (decoded back), as zipfile does.
        described = lzma._decode_filter_properties(lzma.FILTER_LZMA1, properties)  # type: ignore[attr-defined]
        self._compressor = lzma.LZMACompressor(lzma.FORMAT_RAW, filters=[described])
        self._header = struct.pack("<BBH", 9, 4, len(properties)) + properties  # LZMA SDK 9.4, as zipfile writes

    def _take_header(self) -> bytes:
        header, self._header = self._header, b""
        return header

    def compress(self, data: bytes) -> bytes:
        return self._take_header() + self._compressor.compress(data)

    def flush(self) -> bytes:
        return self._take_header() + self._compressor.flush()


@contextlib.contextmanager
def lzma_sized_for(member_bytes: int) -> Iterator[None]:
    """zipfile has no setting for its LZMA filter, so its compressor factory is swapped while one member is written."""
    original = zipfile._get_compressor  # type: ignore[attr-defined]

    def get_compressor(compress_type: int, compresslevel: int | None = None) -> object:
        if compress_type == zipfile.ZIP_LZMA:
            return SizedLzmaCompressor(member_bytes)
        return original(compress_type, compresslevel)

    zipfile._get_compressor = get_compressor  # type: ignore[attr-defined]
    try:
        yield
    finally:
        zipfile._get_compressor = original  # type: ignore[attr-defined]


def write_member(archive: zipfile.ZipFile, original: zipfile.ZipInfo, data: bytes) -> None:
    """The member with its original name, time and mode; LZMA except the (small) dist-info metadata, which stays
    deflated as in any wheel."""
    info = zipfile.ZipInfo(original.filename, date_time=original.date_time)
    info.external_attr = original.external_attr
    info.create_system = original.create_system
    info.compress_type = zipfile.ZIP_DEFLATED if ".dist-info/" in original.filename else zipfile.ZIP_LZMA
    with lzma_sized_for(len(data)):
        archive.writestr(info, data, compresslevel=9)


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def is_dropped(member: str) -> bool:
    return any(member == path or (path.endswith("/") and member.startswith(path)) for path in DROPPED_FROM_VLLM)


def patched(member: str, data: bytes) -> bytes:
    """The member with its patches applied; each patch's text must occur exactly once."""
    text = data.decode()
    for path, old, new in PATCHES:
        if path != member:
            continue
        if text.count(old) != 1:
            sys.exit(f"patch for {member}: expected text found {text.count(old)} times, not once:\n{old}")
        text = text.replace(old, new)
    return text.encode()


def slim_vllm_wheel(pypi_wheel: Path, out: Path) -> None:
    """pypi_wheel without DROPPED_FROM_VLLM, PATCHES applied, members LZMA, RECORD made again from the bytes."""
    unused_drops = set(DROPPED_FROM_VLLM)
    unpatched = {path for path, _, _ in PATCHES}
    record_rows: list[tuple[str, str, str]] = []
    unfinished = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(pypi_wheel) as source, zipfile.ZipFile(unfinished, "w") as slim:
        infos = source.infolist()
        (record_name,) = [i.filename for i in infos if i.filename.endswith(".dist-info/RECORD")]
        for info in infos:
            if info.filename == record_name or info.is_dir():
                continue
            if is_dropped(info.filename):
                unused_drops -= {p for p in DROPPED_FROM_VLLM if info.filename.startswith(p)}
                continue
            data = source.read(info)
            if info.filename in unpatched:
                data = patched(info.filename, data)
                unpatched.discard(info.filename)
            started = time.monotonic()
            write_member(slim, info, data)
            if len(data) > 5e6:
                print(f"  {info.filename} {len(data):,} -> {slim.getinfo(info.filename).compress_size:,} B"
                      f" ({time.monotonic() - started:.0f} s)", flush=True)
            record_rows.append((info.filename, record_hash(data), str(len(data))))
        if unused_drops or unpatched:
            sys.exit(f"not in {pypi_wheel.name}: {sorted(unused_drops | unpatched)} (another vllm version?)")
        record_rows.append((record_name, "", ""))
        record_info = zipfile.ZipInfo(record_name, date_time=infos[-1].date_time)
        record_info.external_attr = 0o644 << 16
        record_info.compress_type = zipfile.ZIP_DEFLATED
        record_text = io.StringIO()
        csv.writer(record_text, lineterminator="\n").writerows(record_rows)  # quotes the paths with commas
        slim.writestr(record_info, record_text.getvalue())
    unfinished.replace(out)


def repack_if_smaller(wheel: Path) -> str:
    """The wheel's members, bytes untouched (its RECORD too), written again with LZMA; kept only if that saves
    enough to matter. Returns a line for the log."""
    repacked = wheel.with_name(wheel.name + ".lzma")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(repacked, "w") as target:
        for info in source.infolist():
            write_member(target, info, source.read(info))
    before, after = wheel.stat().st_size, repacked.stat().st_size
    if after < before * LZMA_MIN_SAVING:
        repacked.replace(wheel)
        return f"  {wheel.name} {before:,} -> {after:,} B"
    repacked.unlink()
    return f"  {wheel.name} kept at {before:,} B (LZMA {after:,})"


# ---- the two parts -----------------------------------------------------------------------------------------------

def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def split_wheel(wheel: Path, part1: Path, part2: Path) -> None:
    with wheel.open("rb") as source:
        (part1 / f"{wheel.name}.part-aa").write_bytes(source.read(PART1_BYTES))
        (part2 / f"{wheel.name}.part-ab").write_bytes(source.read())


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@dataclasses.dataclass
class Built:
    vllm_wheel: Path
    vllm_sha256: str
    dependencies: list[Path]
    optional: Path
    left_out: dict[str, set[str]]
    part1_bytes: int
    part2_bytes: int


def wrapped(words: str) -> str:
    return textwrap.fill(words, width=116, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False)


def readme_text(built: Built) -> str:
    names = [parse_wheel_filename(w.name) for w in built.dependencies]
    dependency_list = wrapped(" ".join(f"{name}=={version}" for name, version, _, _ in names))
    left_out = wrapped(" ".join(sorted(built.left_out)))
    dropped = "\n".join(f"  {path}" for path in DROPPED_FROM_VLLM)
    return f"""\
Offline vLLM 0.26.0 bundle for the GPU host's own torch 2.11.0+cu130 (CPython 3.12, x86_64)
Made by `python3 -m bench.vllm_bundle --out DIR` on {time.strftime("%Y-%m-%d")}; its docstring says why and how.

LAYOUT
  part1/  {built.part1_bytes:,} B  {VLLM_WHEEL}.part-aa (the first {PART1_BYTES // MiB} MiB)
  part2/  {built.part2_bytes:,} B  .part-ab, vllm-whl.sha256, install.sh, {len(built.dependencies)} dependency wheels,
          optional/{built.optional.name} (installed only if the host's is < 4.16.0)
  (sizes are the files' bytes; each part must stay under {PART_LIMIT_BYTES // MiB} MiB)
  The rebuilt wheel (PyPI's is 304 MB): {built.vllm_wheel.stat().st_size:,} B,
  sha256 {built.vllm_sha256}

INSTALL (part1 and part2 brought to the host, e.g. /tmp/p1 and /tmp/p2, one call each)
  bash /tmp/p2/install.sh /tmp/p1 /tmp/p2 /tmp/vsite
  (joins the parts, checks the sha256, pip install --no-index --no-deps --no-compile --target /tmp/vsite)

RUN
  export PYTHONPATH=/tmp/vsite VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1
  python3 -m vllm.entrypoints.cli.main serve MODEL --dtype bfloat16 --attention-backend FLASH_ATTN ...
  VLLM_USE_RUST_FRONTEND must stay unset (vllm-rs is not carried). Add --enforce-eager if inductor has trouble.

REMOVED FROM THE WHEEL (all loaded only conditionally; RECORD made again)
{dropped}
  => FA3 on SM90 (FA2 only for ALiBi / flash_attn_version=2), no FA4, no DeepGEMM, no Rust frontend, and
     DENSE MODELS ONLY: torch.ops._moe_C is used only by fused_moe and the MoE ops.
  The main op library is vllm/_C_stable_libtorch.abi3.so (there is no vllm/_C.abi3.so in 0.26.0). The kept .so
  files need libcudart.so.13 and torch 2.11 (FA3 uses the non-stable libtorch ABI).

PATCHES
  {SAMPLER_PY}: the flashinfer backend import in
    flashinfer_sampler_supported() is wrapped in try/except ImportError (warning, return False),
    so a forgotten VLLM_USE_FLASHINFER_SAMPLER=0 cannot crash the sampler's set-up.
  {OTEL_PY}: `except ImportError:` -> `except Exception:` around the opentelemetry imports, since
    googleapis-common-protos 1.76 raises protobuf's VersionError under protobuf < 6.33.

FORMAT
  Members are ZIP_LZMA (preset 9e, dictionary up to 64 MiB), *.dist-info/* deflated. Dependency wheels are
  repacked the same way where that saves 3 % or more; member bytes and their RECORD are untouched. pip installs
  them without warnings; the host's python needs its lzma module (standard).

DEPENDENCIES (vllm's METADATA for the host, no extras, resolved recursively)
{dependency_list}
  xgrammar stays at 0.2.7: vllm pins apache-tvm-ffi==0.1.10 and xgrammar>=0.2.8 needs tvm-ffi>=0.1.11.
  llguidance is needed at import time; its 1.7.x wheel is manylinux_2_31 (the host has glibc 2.39).
  mistral-common declares numpy<2.4 on py3.12; with --no-deps the host's numpy stays and works.
  Left out (in the image, GPU packages imported only lazily, the anthropic SDK, the `fastapi` command):
{left_out}
"""


def write_parts(built_wheel: Path, resolution: Resolution, optional: Path, out: Path) -> Built:
    part1, part2 = out / "part1", out / "part2"
    for folder in (part1, part2, part2 / "optional"):
        folder.mkdir(parents=True)
    split_wheel(built_wheel, part1, part2)
    vllm_sha256 = sha256_of(built_wheel)
    (part2 / "vllm-whl.sha256").write_text(f"{vllm_sha256}  {built_wheel.name}\n")
    (part2 / "install.sh").write_text(INSTALL_SH)
    dependencies = sorted(resolution.wheels.values(), key=lambda w: w.name)
    for wheel in dependencies:
        shutil.copy2(wheel, part2 / wheel.name)
    shutil.copy2(optional, part2 / "optional" / optional.name)
    built = Built(built_wheel, vllm_sha256, dependencies, optional, resolution.left_out,
                  folder_bytes(part1), folder_bytes(part2))
    for part, size in (("part1", built.part1_bytes), ("part2", built.part2_bytes)):
        if size >= PART_LIMIT_BYTES:
            sys.exit(f"{part} is {size / MiB:.1f} MiB, over {PART_LIMIT_BYTES // MiB} MiB: move wheels to part1")
    (out / "README.txt").write_text(readme_text(built))
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True, help="gets part1/, part2/, README.txt; must not exist")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vllm_bundle_work"),
                        help="downloads and the rebuilt wheel; PyPI's vllm wheel is kept here for the next run")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"{args.out} is not empty; remove it or pick another --out")
    started = time.monotonic()
    work: Path = args.work
    pypi_vllm = work / "pypi" / VLLM_WHEEL
    if not pypi_vllm.exists():
        print(f"downloading {VLLM_REQUIREMENT} (~300 MB)", flush=True)
        pip_download(VLLM_REQUIREMENT, pypi_vllm.parent)
    print("slimming the vllm wheel (LZMA, ~2 min)", flush=True)
    (work / "built").mkdir(parents=True, exist_ok=True)
    built_wheel = work / "built" / VLLM_WHEEL
    slim_vllm_wheel(pypi_vllm, built_wheel)
    print("resolving and downloading the dependencies", flush=True)
    shutil.rmtree(work / "deps", ignore_errors=True)  # a fresh resolution each run; pip's cache keeps it quick
    shutil.rmtree(work / "optional", ignore_errors=True)
    resolution = resolve_dependencies(pypi_vllm, work / "deps")
    optional = pip_download(OPTIONAL_WHEEL, work / "optional")
    print("repacking the dependency wheels with LZMA", flush=True)
    with ProcessPoolExecutor() as pool:
        for line in pool.map(repack_if_smaller, sorted(resolution.wheels.values())):
            print(line, flush=True)
    built = write_parts(built_wheel, resolution, optional, args.out)
    print(f"{args.out}: part1 {built.part1_bytes / MiB:.1f} MiB, part2 {built.part2_bytes / MiB:.1f} MiB, "
          f"{len(built.dependencies)} dependency wheels, vllm sha256 {built.vllm_sha256} "
          f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
