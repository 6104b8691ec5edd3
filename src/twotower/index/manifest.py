"""The schema of an index version's ``manifest.json``, and of the parameters of each index kind.

A manifest is plain JSON beside the index; its checksums protect ``index.faiss`` and
``ids.parquet`` but not the manifest itself, so everything a search reads from it (kind,
parameters, dimension, counts) is validated here at load, and the kind is checked against the
FAISS structure actually stored. A hand-edited or corrupt manifest is one ``ArtifactError`` naming
the file and the field, never a crash at the first request. The same parameter schema checks
``--param`` values at build time (a ``ConfigError`` there).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from twotower.errors import ArtifactError, ConfigError

KINDS = ("flat", "hnsw", "ivf-flat", "ivf-pq", "opq", "sq8", "fp16")
VERSION_PATTERN = re.compile(r"v\d{6}")

PositiveInt = Annotated[StrictInt, Field(ge=1)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
Sha256 = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]


class _Params(BaseModel):
    # every field required: a manifest stores the resolved parameters, a build merges the defaults
    model_config = ConfigDict(extra="forbid", strict=True)


class FlatParams(_Params):
    pass


class HnswParams(_Params):
    M: PositiveInt
    ef_construction: PositiveInt
    ef_search: PositiveInt


class IvfParams(_Params):
    nlist: Optional[NonNegativeInt]  # None = 4·√N (resolved at build); 0 = no IVF partition
    nprobe: PositiveInt


class PqParams(IvfParams):
    pq_m: Optional[PositiveInt]  # None = D/2 sub-quantisers (resolved at build)
    pq_bits: Annotated[StrictInt, Field(ge=1, le=16)]


PARAMS_SCHEMA: dict[str, type[_Params]] = {
    "flat": FlatParams, "hnsw": HnswParams, "ivf-flat": IvfParams, "ivf-pq": PqParams,
    "opq": PqParams, "sq8": IvfParams, "fp16": IvfParams,
}

#: FAISS classes (inside the id map) each kind is built as; IVF kinds with ``nlist=0`` are flat
#: (or plain PQ / SQ) structures, so both forms are listed.
FAISS_CLASSES: dict[str, tuple[str, ...]] = {
    "flat": ("IndexFlat", "IndexFlatIP"),
    "hnsw": ("IndexHNSWFlat",),
    "ivf-flat": ("IndexIVFFlat", "IndexFlat", "IndexFlatIP"),
    "ivf-pq": ("IndexIVFPQ", "IndexPQ"),
    "opq": ("IndexPreTransform",),
    "sq8": ("IndexIVFScalarQuantizer", "IndexScalarQuantizer"),
    "fp16": ("IndexIVFScalarQuantizer", "IndexScalarQuantizer"),
}


class IndexManifest(BaseModel):
    """What ``save_index`` writes; extra keys are kept (newer writers may add some)."""

    model_config = ConfigDict(extra="allow", strict=True)

    format_version: StrictInt
    version: Annotated[StrictStr, Field(pattern=r"^v\d{6}$")]
    kind: Literal[KINDS]  # type: ignore[valid-type]
    params: dict[str, Any]
    dim: PositiveInt
    metric: Literal["inner_product"]
    normalized: StrictBool
    count: NonNegativeInt
    next_label: NonNegativeInt
    contract: dict[str, Any]
    files: dict[Literal["index.faiss", "ids.parquet"], Sha256]
    weight_column: Optional[StrictStr] = None
    model_sha256: Optional[StrictStr] = None
    factory: Optional[StrictStr] = None
    parent: Optional[StrictStr] = None
    created: Optional[StrictStr] = None
    build_seconds: Optional[float] = None


def _describe(err: ValidationError, prefix: str = "") -> str:
    """First problem of a pydantic error as ``field.path: message (got value)``."""
    e = err.errors()[0]
    loc = ".".join(str(x) for x in (prefix, *e["loc"]) if x != "")
    got = e.get("input")
    shown = "" if e["type"] == "missing" else f" (got {got!r})" if len(repr(got)) < 80 else ""
    return f"{loc or 'manifest'}: {e['msg']}{shown}"


def check_params(kind: str, params: dict) -> None:
    """Raise ``ValueError`` describing the first bad parameter of ``kind`` (a complete set)."""
    try:
        PARAMS_SCHEMA[kind].model_validate(params)
    except ValidationError as err:
        raise ValueError(_describe(err, "params")) from None


def validate_build_params(kind: str, params: dict) -> None:
    """``--param`` values (merged over the kind's defaults) of a new index: ConfigError if bad."""
    try:
        check_params(kind, params)
    except ValueError as err:
        raise ConfigError(f"index kind {kind!r}: {err}") from None


def validate_manifest(manifest: Any, path: Path, folder_version: str) -> dict:
    """The manifest of index version ``folder_version`` checked against the schema, or an
    ArtifactError naming ``path`` and the field (the hint says how to rebuild)."""
    hint = "the manifest was edited or is corrupt; rebuild the index with `twotower index RUN`"
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: expected a JSON object, got {type(manifest).__name__}; {hint}")
    try:
        m = IndexManifest.model_validate(manifest)
        check_params(m.kind, m.params)
    except ValidationError as err:
        raise ArtifactError(f"{path}: {_describe(err)}; {hint}") from None
    except ValueError as err:
        raise ArtifactError(f"{path}: {err} for kind {m.kind!r}; {hint}") from None
    unresolved = [k for k, v in m.params.items() if v is None]
    if unresolved:
        raise ArtifactError(f"{path}: params.{unresolved[0]} is null (a saved index stores resolved "
                            f"values); {hint}")
    if m.version != folder_version:
        raise ArtifactError(f"{path}: manifest is of version {m.version} but lies in folder "
                            f"{folder_version}; {hint}")
    return manifest


def check_faiss_structure(index: Any, manifest: dict, path: Path) -> None:
    """The stored FAISS index must be what the manifest's kind says (searching an HNSW graph as
    a flat index, say, would read garbage)."""
    import faiss

    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    found = type(inner).__name__
    kind = manifest["kind"]
    if found not in FAISS_CLASSES[kind]:
        raise ArtifactError(f"{path}: manifest says kind {kind!r} but index.faiss holds a FAISS "
                            f"{found}; the manifest was edited — rebuild the index with "
                            "`twotower index RUN`")
    is_ivf = found.startswith("IndexIVF") or (found == "IndexPreTransform"
                                             and _has_ivf(faiss, inner))
    nlist = manifest["params"].get("nlist")
    if nlist is not None and bool(nlist) != is_ivf:
        raise ArtifactError(f"{path}: params.nlist is {nlist} but index.faiss "
                            f"{'is' if is_ivf else 'is not'} IVF-partitioned; rebuild the index "
                            "with `twotower index RUN`")


def _has_ivf(faiss: Any, index: Any) -> bool:
    try:
        return faiss.extract_index_ivf(index) is not None
    except RuntimeError:
        return False


def check_version_name(name: str, where: str) -> str:
    """An index version is ``vNNNNNN`` inside the run's own ``index/`` folder: anything else
    (a path, ``../other_run/index/v000001``) is refused."""
    if not VERSION_PATTERN.fullmatch(name):
        raise ArtifactError(f"{where}: {name!r} is not an index version of this run (expected "
                            "vNNNNNN, e.g. v000001, naming a folder of RUN/index/)")
    return name
