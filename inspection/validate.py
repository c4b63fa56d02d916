"""Check reinforced shards, or a whole output folder, against contract §2; exit non-zero on any violation.

Usage: `python -m pipeline.validate PATH [--raw RAWDIR] [--teacher-dims 768,768]`

PATH is a shard, a glob of shards, or an output folder. Every problem is one line
`PATH KEY REASON: DETAIL` (KEY is `-` for a whole file), then a one-line verdict. Public DataCompDR
shards (v1/v2, npz/pth.gz) validate without any run file: their teacher widths come from
`--teacher-dims` or, failing that, from the equal split that makes the first sample's slices unit-norm.
Everything streams one sample at a time, so memory stays flat on 2 GB shards.

Where a sample stores view fingerprints (`view_sha`), every view is re-rendered from its image and
`param_aug` entry here and hashed: a view whose pixels differ from what the teachers saw (another
Pillow build, contract §3) is a `replay_differs` problem, and the notes give both image stacks.
Shards written before fingerprints have nothing to check, which the notes say.

With `--raw`, every image must be the raw sample's of its uid: in the raw shard of the same name for
our reinforce runs (their input), in any raw shard for a join's output or published shards.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from shards import storage
from shards.interrupt import exit_on_interrupt
from shards.raw import RawSample, iter_raw_shard
from shards.reinforced import IMAGE_SHA256, ReinforcedSample, ShardEntry, iter_entries
from shards.run_config import augmenter_from_config, configured_families, fingerprints_checkable
from shards.run_folder import RunFolder, ShardStats, committed_shards, open_run, shard_name
from shards.storage import parse_known_beam_args
from shards.teacher_slices import (
    UNIT_NORM_TOLERANCE,
    TeacherSlice,
    infer_slices,
    is_unit_norm,
    parse_teacher_dims,
    slice_norms,
    slices_from_dims,
)
from transforms.augmenter import ViewAugmenter
from transforms.crop import check_box
from transforms.decode import decode_image
from transforms.errors import AugmentationError, BadImageError
from transforms.fingerprint import image_stack, view_fingerprint
from transforms.params import PARAM_AUG_VERSION, ViewParams, decode_param_aug

REQUIRED_CONFIG_KEYS = (
    "schema_version",
    "layout",
    "embedding_dtype",
    "teachers",
    "num_views",
    "num_captions",
)
# Our own shards carry every member of contract §2; published DataCompDR shards ship without images
# and original captions (users download the images from url.txt), so those two are optional there.
OUR_MEMBERS = ("url.txt", "txt", "jpg", "json", "syn.json", "paug.json")
PUBLISHED_MEMBERS = ("url.txt", "json", "syn.json", "paug.json")
EMBEDDING_MEMBERS = {"fp32": "npz", "bf16": "pth.gz"}
_GLOB_CHARS = frozenset("*?[")


@dataclasses.dataclass(frozen=True)
class Problem:
    path: str
    key: str
    reason: str
    detail: str

    def line(self) -> str:
        return f"{self.path} {self.key or '-'} {self.reason}: {self.detail}"


@dataclasses.dataclass
class Outcome:
    shards: int = 0
    samples: int = 0
    problems: Counter[str] = dataclasses.field(default_factory=Counter)  # reason -> count
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def verdict(self) -> str:
        checked = f"{self.shards} shard(s), {self.samples} sample(s) checked"
        if self.ok:
            return f"OK: {checked}, no problems"
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.problems.items()))
        return f"FAIL: {sum(self.problems.values())} problem(s) in {checked} ({reasons})"


@dataclasses.dataclass
class _Expectations:
    """What every sample must look like: from config.json, else learnt from the first good sample."""

    slices: list[TeacherSlice] | None
    num_views: int | None = None
    num_captions: int | None = None
    families: tuple[str, ...] | None = None
    embedding_member: str | None = None
    learnt: bool = False  # no config: values come from the first sample and only demand consistency


class Validator:
    def __init__(
        self,
        run: RunFolder,
        raw_dir: str | None = None,
        teacher_dims: list[int] | None = None,
        report: Callable[[Problem], None] | None = None,
    ) -> None:
        self.run = run
        self.raw_dir = raw_dir
        self.outcome = Outcome()
        self._report = report
        # Public DataCompDR folders carry a manifest but no config or stats: only those mark our runs.
        self.is_our_run = run.config is not None or self._any_stats()
        config = run.config or {}
        slices = slices_from_dims(teacher_dims) if teacher_dims else run.teacher_slices()
        self.expect = _Expectations(
            slices=slices,
            num_views=_int_or_none(config.get("num_views")),
            num_captions=_int_or_none(config.get("num_captions")),
            families=configured_families(config),
            embedding_member=EMBEDDING_MEMBERS.get(str(config.get("embedding_dtype"))),
            learnt=run.config is None,
        )
        self.param_aug_version = _int_or_none(config.get("param_aug_version")) or PARAM_AUG_VERSION
        self.augmenter = self._augmenter(config)
        self.check_fingerprints = fingerprints_checkable(run.config)
        # A join's output shards follow the reinforced shards, not the raw ones (config.json `join`).
        self._from_raw_shards = run.config is not None and "join" not in run.config
        self._raw_by_uid: dict[str, tuple[str, frozenset[str]]] | None = None
        self.replay: Counter[str] = Counter()  # views checked / differing; samples without fingerprints

    def problem(self, path: str, key: str, reason: str, detail: str) -> None:
        self.outcome.problems[reason] += 1
        if self._report is not None:
            self._report(Problem(path, key, reason, detail))

    def validate(self) -> Outcome:
        run = self.run
        if not run.shards:
            self.problem(run.path, "", "no_shards", "no .tar shard found here")
        if self.is_our_run:
            self._check_config()
        counts: dict[str, int] = {}
        for shard in run.shards:
            counts[shard] = self._check_shard(shard)
            self.outcome.shards += 1
        self._check_manifest(counts)
        if self.is_our_run:
            self._check_shard_files(counts)
        for path, what in run.problems:  # collected while the run files above were read
            self.problem(path, "", "unreadable_run_file", what)
        self._note_replay()
        return self.outcome

    def _note_replay(self) -> None:
        replay, notes = self.replay, self.outcome.notes
        if replay["unchecked_samples"]:
            notes.append(
                f"{replay['unchecked_samples']} sample(s) carry no view fingerprints (written before "
                "they existed): their replay could not be checked"
            )
        if not self.check_fingerprints and replay["fingerprinted_samples"]:
            notes.append(
                "view fingerprints not checked: no config.json gives the views' recipe, or it names "
                "a fingerprint algorithm unknown here"
            )
        if replay["views"]:
            notes.append(
                f"replay: {replay['views']} view(s) re-rendered, {replay['differ']} differ from the "
                "fingerprints stored when the teachers embedded them"
            )
        recorded = (self.run.config or {}).get("image_stack")
        if replay["differ"] or (replay["views"] and recorded and recorded != image_stack()):
            notes.append(f"image stack here: {image_stack()}; the run's: {recorded or 'not recorded'}")

    # -- run files --------------------------------------------------------------------------------

    def _any_stats(self) -> bool:
        if not self.run.shards:
            return False
        committed = committed_shards(self.run.root)  # one listing, not one request per shard
        return any(shard_name(shard) in committed for shard in self.run.shards)

    def _augmenter(self, config: dict[str, Any]) -> ViewAugmenter | None:
        """The run's view recipe; public shards follow DataCompDR's."""
        try:
            return augmenter_from_config(self.run.config)
        except (TypeError, ValueError, AttributeError) as error:
            self.problem(self.run.config_path, "", "bad_config", f"reinforce.image_augmentation: {error}")
            return None

    def _check_config(self) -> None:
        config, path = self.run.config, self.run.config_path
        if config is None:
            self.problem(path, "", "missing_run_file", "the run has no config.json")
            return
        for name in REQUIRED_CONFIG_KEYS:
            if name not in config:
                self.problem(path, "", "bad_config", f"no {name!r}")
        if not (config.get("reinforce") or {}).get("image_augmentation"):
            self.problem(path, "", "bad_config", "no reinforce.image_augmentation")
        if config.get("layout") not in ("v1", "v2"):
            self.problem(path, "", "bad_config", f"layout is {config.get('layout')!r}, not v1 or v2")
        if config.get("embedding_dtype") not in EMBEDDING_MEMBERS:
            self.problem(path, "", "bad_config", f"embedding_dtype is {config.get('embedding_dtype')!r}")
        if self.expect.slices is None:
            self.problem(path, "", "bad_config", "no teacher widths: cannot check per-teacher norms")

    def _check_manifest(self, counts: dict[str, int]) -> None:
        """Every shard listed once, with the number of samples its tar holds."""
        run = self.run
        if run.manifest is None:
            if self.is_our_run:
                self.problem(run.manifest_path, "", "missing_run_file", "the run has no manifest.jsonl")
            return
        listed: dict[str, Any] = {}
        for entry in run.manifest:
            if entry["shard"] in listed:
                self.problem(run.manifest_path, "", "manifest_mismatch", f"{entry['shard']} listed twice")
            listed[entry["shard"]] = entry.get("num_samples")
        tars = {shard_name(shard): shard for shard in run.shards}
        for name, shard in tars.items():
            if name not in listed:
                self.problem(run.manifest_path, "", "manifest_mismatch", f"shard {name} is not listed")
            elif listed[name] != counts[shard]:
                self.problem(
                    run.manifest_path,
                    "",
                    "manifest_mismatch",
                    f"{name}: num_samples {listed[name]}, the tar holds {counts[shard]}",
                )
        if run.is_folder:
            for name in sorted(set(listed) - set(tars)):
                self.problem(run.manifest_path, "", "manifest_mismatch", f"{name} is listed but has no tar")

    def _check_shard_files(self, counts: dict[str, int]) -> None:
        """Each shard's stats (the commit marker), errors file and parquet agree with its tar."""
        run = self.run
        tars = {shard_name(shard): shard for shard in run.shards}
        for shard in tars.values():
            stats = run.stats(shard)
            if stats is None:
                self.problem(
                    run.stats_path(shard), "", "missing_run_file", "shard has no stats (not committed)"
                )
            else:
                self._check_stats(shard, stats, counts[shard])
            self._check_parquet(shard, counts[shard])
        if run.is_folder:
            for name in sorted(committed_shards(run.root) - set(tars)):
                self.problem(
                    run.stats_path(name),
                    "",
                    "missing_shard",
                    f"stats commit shard {name}, whose tar is missing",
                )

    def _check_stats(self, shard: str, stats: ShardStats, written: int) -> None:
        path = self.run.stats_path(shard)
        if stats.num_written != written:
            self.problem(
                path, "", "stats_mismatch", f"num_written {stats.num_written}, the tar holds {written}"
            )
        if stats.num_read != stats.num_written + stats.num_skipped:
            self.problem(
                path,
                "",
                "stats_mismatch",
                f"num_read {stats.num_read} != num_written {stats.num_written} + skipped {stats.num_skipped}",
            )
        records = self.run.errors(shard)
        if records is None:
            self.problem(self.run.errors_path(shard), "", "missing_run_file", "shard has no errors file")
            return
        by_reason = Counter(str(r.get("reason")) for r in records if not r.get("whole_shard"))
        whole = Counter(str(r.get("reason")) for r in records if r.get("whole_shard"))
        if dict(by_reason) != stats.skipped:
            self.problem(
                path,
                "",
                "stats_mismatch",
                f"skipped {stats.skipped}, the errors file records {dict(sorted(by_reason.items()))}",
            )
        if dict(whole) != stats.shard_errors:
            self.problem(
                path,
                "",
                "stats_mismatch",
                f"shard_errors {stats.shard_errors}, the errors file records {dict(sorted(whole.items()))}",
            )

    def _check_parquet(self, shard: str, written: int) -> None:
        path = self.run.parquet_path(shard)
        if not storage.exists(path):
            self.problem(path, "", "missing_run_file", "shard has no parquet")
            return
        try:
            with storage.open_read(path) as f:
                rows = pq.ParquetFile(f).metadata.num_rows
        except Exception as error:
            self.problem(path, "", "unreadable_run_file", f"{type(error).__name__}: {error}")
            return
        if rows != written:
            self.problem(path, "", "parquet_mismatch", f"{rows} rows, the tar holds {written} samples")

    # -- samples ----------------------------------------------------------------------------------

    def _check_shard(self, shard: str) -> int:
        """Check every sample of one shard; returns how many samples the tar holds."""
        raw = self._raw_digests(shard) if self.raw_dir else None
        seen: set[str] = set()
        count = 0
        for entry in iter_entries(shard, require_image=False):  # published shards carry no image
            if entry.error is not None and entry.error.reason == "unreadable_tar":
                self.problem(shard, "", "unreadable_tar", entry.error.detail)
                continue
            count += 1
            self.outcome.samples += 1
            if entry.key in seen:
                self.problem(shard, entry.key, "duplicate_key", "key appears twice in the shard")
            seen.add(entry.key)
            self._check_members(shard, entry)
            if entry.error is not None:
                self.problem(shard, entry.key, entry.error.reason, entry.error.detail or str(entry.error))
                continue
            assert entry.sample is not None
            self._check_sample(shard, entry, entry.sample)
            if raw is not None:
                self._check_raw(shard, entry, raw)
        if raw is not None:
            self._check_raw_coverage(shard, seen, raw)
        return count

    def _check_members(self, shard: str, entry: ShardEntry) -> None:
        required = OUR_MEMBERS if self.is_our_run else PUBLISHED_MEMBERS
        missing = [m for m in required if m not in entry.members]
        if missing:
            self.problem(shard, entry.key, "missing_member", f"no {', '.join(missing)}")
        stored = [m for m in ("npz", "pth.gz") if m in entry.members]
        if len(stored) > 1:
            self.problem(shard, entry.key, "bad_member", "both npz and pth.gz: which is authoritative?")
        expected = self.expect.embedding_member
        if stored and expected is None and self.expect.learnt:
            self.expect.embedding_member = stored[0]
        elif stored and expected is not None and stored[0] != expected:
            why = "config says" if not self.expect.learnt else "earlier samples use"
            self.problem(shard, entry.key, "embedding_dtype_mismatch", f"{stored[0]}, {why} {expected}")

    def _check_sample(self, shard: str, entry: ShardEntry, sample: ReinforcedSample) -> None:
        key = entry.key
        uid = sample.meta.get("uid")
        if uid is None:
            self.problem(shard, key, "bad_meta", "json has no uid")
        elif str(uid) != key:
            self.problem(shard, key, "key_mismatch", f"__key__ is not the json uid {uid!r}")
        if self.is_our_run:
            absent = [name for name in ("sha256", "width", "height") if name not in sample.meta]
            if absent:
                self.problem(shard, key, "bad_meta", f"json has no {', '.join(absent)}")
        recorded = sample.meta.get(IMAGE_SHA256)
        if recorded is not None and sample.image and recorded != hashlib.sha256(sample.image).hexdigest():
            self.problem(shard, key, "image_hash_mismatch", f"json {IMAGE_SHA256} is not the hash of the jpg")
        self._check_counts(shard, key, sample)
        self._check_norms(shard, key, sample)
        image = self._check_image(shard, entry, sample)
        params = self._check_param_aug(shard, key, sample, image.size if image is not None else None)
        if image is not None:
            self._check_replay(shard, key, sample, image, params)

    def _check_counts(self, shard: str, key: str, sample: ReinforcedSample) -> None:
        expect = self.expect
        families = tuple(sorted(sample.syn_captions))
        captions = {len(caps) for caps in sample.syn_captions.values()}
        if expect.learnt and expect.num_views is None:
            expect.num_views = sample.num_views
            expect.families = families
            expect.num_captions = next(iter(captions)) if len(captions) == 1 else None
        source = "earlier samples have" if expect.learnt else "config says"
        if expect.num_views is not None and sample.num_views != expect.num_views:
            self.problem(
                shard, key, "count_mismatch", f"{sample.num_views} views, {source} {expect.num_views}"
            )
        if expect.families is not None and families != expect.families:
            self.problem(
                shard,
                key,
                "layout_mismatch",
                f"caption families {list(families)}, {source} {list(expect.families)}",
            )
        for family, caps in sorted(sample.syn_captions.items()):
            if expect.num_captions is not None and len(caps) != expect.num_captions:
                self.problem(
                    shard,
                    key,
                    "count_mismatch",
                    f"{family}: {len(caps)} captions, {source} {expect.num_captions}",
                )
            if any(not caption.strip() for caption in caps):
                self.problem(shard, key, "empty_caption", f"{family} holds an empty synthetic caption")

    def _check_norms(self, shard: str, key: str, sample: ReinforcedSample) -> None:
        arrays = {"image_emb": sample.image_emb, "text_emb[0]": sample.caption_emb[None]}
        for family, emb in sorted(sample.syn_emb.items()):
            arrays[f"{family} embeddings"] = emb
        for name, array in arrays.items():
            if not np.isfinite(array).all():
                self.problem(shard, key, "not_finite", f"{name} holds NaN or infinity")
                return
        if self.expect.slices is None:
            self.expect.slices = self._infer_slices(sample.image_emb)
            if self.expect.slices is None:
                self.problem(
                    shard,
                    key,
                    "bad_norm",
                    f"no equal split of D={sample.dim} gives unit-norm teacher slices; pass --teacher-dims",
                )
                return
        slices = self.expect.slices
        dim = slices[-1].stop
        if sample.dim != dim:
            widths = "+".join(str(s.dim) for s in slices)
            self.problem(shard, key, "bad_shape", f"D={sample.dim}, the teachers give {widths}={dim}")
            return
        for name, array in arrays.items():
            if array.shape[0] == 0:
                continue
            for teacher in slices:
                norms = slice_norms(array, teacher)
                worst = int(np.argmax(np.abs(norms - 1.0)))
                if not is_unit_norm(norms[worst]):
                    self.problem(
                        shard,
                        key,
                        "bad_norm",
                        f"{name} row {worst}, teacher {teacher.name} (columns {teacher.start}:"
                        f"{teacher.stop}): norm {norms[worst]:.4f}, expected 1 ± {UNIT_NORM_TOLERANCE:g}",
                    )

    def _infer_slices(self, image_emb: np.ndarray) -> list[TeacherSlice] | None:
        slices = infer_slices(image_emb)
        if slices is not None:
            self.outcome.notes.append(
                f"no config: teacher widths inferred from norms as {len(slices)} x {slices[0].dim} "
                "(pass --teacher-dims to state them)"
            )
        return slices

    def _check_image(self, shard: str, entry: ShardEntry, sample: ReinforcedSample) -> Image.Image | None:
        """The decoded image, or None when there is no image to check against."""
        if not entry.has_image:
            return None
        try:
            image = decode_image(sample.image)
        except BadImageError as error:
            self.problem(shard, entry.key, "bad_image", f"{error.reason}: {error}")
            return None
        size = image.size
        width, height = sample.meta.get("width"), sample.meta.get("height")
        if self.is_our_run and (width, height) != size and (width, height) != (None, None):
            self.problem(
                shard,
                entry.key,
                "bad_meta",
                f"json says {width}x{height}, the image decodes to {size[0]}x{size[1]}",
            )
        return image

    def _check_param_aug(
        self, shard: str, key: str, sample: ReinforcedSample, image_size: tuple[int, int] | None
    ) -> list[ViewParams | None]:
        """Every entry decodes, has the run's steps, and its crop box lies inside the decoded image;
        returns the decoded entries (None for a bad one)."""
        decoded: list[ViewParams | None] = []
        for index, entry in enumerate(sample.param_aug):
            decoded.append(None)
            try:
                params = decode_param_aug(entry, version=self.param_aug_version)
                if image_size is not None:
                    check_box(params.crop, image_size)
            except AugmentationError as error:
                self.problem(shard, key, "bad_param_aug", f"param_aug[{index}] {error.reason}: {error}")
                continue
            decoded[-1] = params
            if self.augmenter is not None and params.steps != self.augmenter.steps:
                self.problem(
                    shard,
                    key,
                    "bad_param_aug",
                    f"param_aug[{index}] has steps {list(params.steps)}, "
                    f"the run's are {list(self.augmenter.steps)}",
                )
        return decoded

    def _check_replay(
        self,
        shard: str,
        key: str,
        sample: ReinforcedSample,
        image: Image.Image,
        params: list[ViewParams | None],
    ) -> None:
        """Each view, rendered here at the teachers' size, hashes to the fingerprint stored at generation."""
        if sample.view_sha is None:
            self.replay["unchecked_samples"] += 1
            return
        self.replay["fingerprinted_samples"] += 1
        if not self.check_fingerprints or self.augmenter is None:
            return
        differ = []
        for index, (view_params, stored) in enumerate(zip(params, sample.view_sha, strict=True)):
            if view_params is None:  # already reported as bad_param_aug
                continue
            self.replay["views"] += 1
            if view_fingerprint(self.augmenter.apply(image, view_params)) != stored:
                differ.append(index)
        if differ:
            self.replay["differ"] += len(differ)
            self.problem(
                shard,
                key,
                "replay_differs",
                f"views {differ} of {len(params)} replay to other pixels than the teachers saw "
                "(a different decode/resize stack: see the notes)",
            )

    # -- raw input --------------------------------------------------------------------------------

    def _raw_digests(self, shard: str) -> dict[str, tuple[str, frozenset[str]]]:
        """uid -> (input key, sha256s of its raw image bytes) for the raw samples `shard` is paired with.

        Our reinforce (and extend) runs: the raw shard of the same name, which was the input. Joined or
        published shards: every raw shard, by uid, since their sharding has nothing to do with the raw
        side's (read once, kept for the other shards)."""
        assert self.raw_dir is not None
        if not self._from_raw_shards:
            if self._raw_by_uid is None:
                self._raw_by_uid = self._index_raw(self._raw_folder_shards())
            return self._raw_by_uid
        raw_path = storage.join(self.raw_dir, storage.basename(shard))
        if not storage.exists(raw_path):
            self.problem(raw_path, "", "missing_raw", f"no raw shard for {storage.basename(shard)}")
            return {}
        return self._index_raw([raw_path])

    def _raw_folder_shards(self) -> list[str]:
        assert self.raw_dir is not None
        pattern = self.raw_dir if _GLOB_CHARS & set(self.raw_dir) else storage.join(self.raw_dir, "*.tar")
        paths = [path for path in storage.match(pattern) if path.endswith(".tar")]
        if not paths:
            self.problem(self.raw_dir, "", "missing_raw", f"no raw .tar shard matches {pattern}")
        return paths

    @staticmethod
    def _index_raw(paths: list[str]) -> dict[str, tuple[str, frozenset[str]]]:
        digests: dict[str, tuple[str, frozenset[str]]] = {}
        for path in paths:
            for item in iter_raw_shard(path):
                if isinstance(item, RawSample):
                    key, known = digests.get(item.uid, (item.key, frozenset()))
                    digests[item.uid] = (key, known | {hashlib.sha256(item.image).hexdigest()})
        return digests

    def _check_raw(self, shard: str, entry: ShardEntry, raw: dict[str, tuple[str, frozenset[str]]]) -> None:
        if entry.key not in raw:
            self.problem(shard, entry.key, "not_in_raw", "no raw input sample has this uid or key")
            return
        assert entry.sample is not None
        if hashlib.sha256(entry.sample.image).hexdigest() not in raw[entry.key][1]:
            self.problem(shard, entry.key, "image_changed", "image bytes differ from the raw input's")

    def _check_raw_coverage(
        self, shard: str, written: set[str], raw: dict[str, tuple[str, frozenset[str]]]
    ) -> None:
        """Every good raw sample is either written or recorded as skipped: nothing is lost silently
        (only where the raw shard was the output shard's input)."""
        records = self.run.errors(shard) if self.is_our_run and self._from_raw_shards else None
        if records is None:
            return
        recorded = {str(record.get("key")) for record in records}
        for uid, (raw_key, _) in sorted(raw.items()):
            if uid not in written and uid not in recorded and raw_key not in recorded:
                self.problem(
                    shard,
                    uid,
                    "lost_sample",
                    f"raw sample {raw_key} is neither written nor recorded as skipped",
                )


def validate(
    path: str,
    raw_dir: str | None = None,
    teacher_dims: list[int] | None = None,
    report: Callable[[Problem], None] | None = None,
) -> Outcome:
    """Check PATH; every problem goes to `report` as it is found."""
    return Validator(open_run(path), raw_dir, teacher_dims, report).validate()


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.validate", description=__doc__.split("\n")[0])
    parser.add_argument("path", help="a shard, a glob of shards, or an output folder (local, gs://, s3://)")
    parser.add_argument(
        "--raw",
        metavar="RAWDIR",
        help="raw input folder (or a glob of raw tars): check every image is byte-identical to the raw "
        "sample of its uid (of the raw shard of the same name for our reinforce runs)",
    )
    parser.add_argument(
        "--teacher-dims",
        type=parse_teacher_dims,
        metavar="D1,D2",
        help="teacher widths, for shards without config.json (e.g. 768,768)",
    )
    args = parse_known_beam_args(parser, argv)  # any Beam filesystem option: --s3_endpoint_url, ...

    def report(problem: Problem) -> None:
        print(problem.line(), flush=True)

    with exit_on_interrupt(lambda: "validate writes nothing; run it again to check from the start"):
        outcome = validate(args.path, args.raw, args.teacher_dims, report)
    for note in outcome.notes:
        print(f"note: {note}", file=sys.stderr)
    print(outcome.verdict())
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
