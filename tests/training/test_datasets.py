"""Training data: instance readers on real files, augmentation, the official crop pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boxmask.guidance import CropSettings
from boxmask.training.datasets import (
    CombinedDatasets,
    DataSpec,
    FolderInstances,
    holdout_split,
    open_dataset,
)
from boxmask.training.samples import CropDataset, epoch_batches
from boxmask.training.transforms import (
    AugmentSettings,
    augment,
    crop_sample,
    hflip,
    scale_rotate,
)

DATA = Path(__file__).parents[1] / "data"
FIX = Path(__file__).parents[1] / "fixtures" / "iog_parity"
VOC_ID = "2007_000063"
COCO_SPEC = f"coco:{DATA}/training/coco/instances_polygons.json,images={DATA}/coco_mval/img"


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    """The real VOC sample as a VOC 2012 tree with its ``ImageSets/Segmentation`` lists."""
    root = tmp_path_factory.mktemp("VOC2012")
    for sub in ("JPEGImages", "SegmentationObject", "SegmentationClass"):
        shutil.copytree(DATA / "voc2012" / sub, root / sub)
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text(f"{VOC_ID}\n")
    (sets / "val.txt").write_text("")
    return root


def voc_png(name: str) -> np.ndarray:
    return np.array(Image.open(DATA / "voc2012" / name / f"{VOC_ID}.png"))


# --------------------------------------------------------------------------- readers


def test_voc_reader_yields_one_sample_per_object_with_void_and_class(voc_root):
    dataset = open_dataset(f"voc:{voc_root}")
    refs = dataset.refs()
    assert [(r.image_id, r.instance, r.label) for r in refs] == [
        (VOC_ID, 1, "12"), (VOC_ID, 2, "9")]  # dog, chair (VOC class indices)
    objects = voc_png("SegmentationObject")
    for ref in refs:
        inst = dataset.load(ref)
        assert inst.image.shape == (375, 500, 3) and inst.image.dtype == np.uint8
        np.testing.assert_array_equal(inst.mask, objects == ref.instance)
        np.testing.assert_array_equal(inst.void, objects == 255)
        assert not (inst.mask & inst.void).any()


def test_voc_val_split_is_read_from_its_list(voc_root):
    assert open_dataset(f"voc:{voc_root},split=val").refs() == []


def test_sbd_reader_reads_the_instance_mat_like_the_voc_png():
    dataset = open_dataset(f"sbd:{DATA}/training/sbd")
    refs = dataset.refs()
    assert [(r.instance, r.label) for r in refs] == [(1, "12"), (2, "9")]
    objects = voc_png("SegmentationObject")
    for ref in refs:
        inst = dataset.load(ref)
        np.testing.assert_array_equal(inst.mask, objects == ref.instance)
        assert not inst.void.any()  # SBD has no void


def test_coco_reader_decodes_polygons_and_rle_and_skips_crowd():
    dataset = open_dataset(COCO_SPEC)
    refs = dataset.refs()
    ann = json.loads((DATA / "training/coco/instances_polygons.json").read_text())
    crowd = [a for a in ann["annotations"] if a["iscrowd"]]
    assert len(refs) == 4 and len(crowd) == 1
    assert crowd[0]["id"] not in {r.instance for r in refs}
    for ref in refs:
        inst = dataset.load(ref)
        stem = next(i["file_name"] for i in ann["images"] if str(i["id"]) == ref.image_id)
        gt = np.array(Image.open(DATA / "coco_mval/gt" / stem.replace(".jpg", ".png"))) == 255
        iou = (inst.mask & gt).sum() / (inst.mask | gt).sum()
        assert iou > 0.97, (stem, iou)  # polygons trace the real masks; RLE is exact
        if ref.image_id == str(crowd[0]["image_id"]):
            assert inst.void.sum() == crowd[0]["area"]  # the crowd region is void
        else:
            assert not inst.void.any()


def test_mask_folder_reads_instance_index_and_binary_pngs():
    davis = FolderInstances(DATA / "davis", images_dir="img", masks_dir="gt")
    values = np.array(Image.open(DATA / "davis/gt/017.png"))
    n_expected = sum(len(set(np.unique(np.array(Image.open(p)))) - {0, 255})
                     for p in sorted((DATA / "davis/gt").glob("*.png")))
    assert len(davis.refs()) == n_expected > 21  # some frames hold several instances
    ref = next(r for r in davis.refs() if r.image_id == "017")
    np.testing.assert_array_equal(davis.load(ref).mask, values == ref.instance)
    mval = open_dataset(f"folder:{DATA}/coco_mval,images_dir=img,masks_dir=gt")
    refs = mval.refs()
    assert len(refs) == 40 and all(r.instance == 255 for r in refs)  # 0/255: one object each
    inst = mval.load(refs[0])
    assert inst.mask.any() and not inst.void.any()


def test_combined_datasets_exclude_the_validation_images(voc_root):
    voc = open_dataset(f"voc:{voc_root}")
    sbd = open_dataset(f"sbd:{DATA}/training/sbd")
    assert len(CombinedDatasets([voc, sbd]).refs()) == 4
    assert CombinedDatasets([voc, sbd], exclude_ids={VOC_ID}).refs() == []


def test_holdout_split_keeps_images_whole_and_is_stable():
    refs = open_dataset(f"folder:{DATA}/davis,images_dir=img,masks_dir=gt").refs()
    train, val = holdout_split(refs, 0.3)
    assert {r.image_id for r in train}.isdisjoint({r.image_id for r in val})
    assert len(train) + len(val) == len(refs) and val
    assert holdout_split(refs[:-3], 0.3)[1] == [r for r in val if r in refs[:-3]]


def test_data_spec_parsing_and_errors():
    spec = DataSpec.parse("coco:/a/b.json,images=/img,min_area=10")
    assert (spec.format, spec.path, spec.options) == ("coco", "/a/b.json",
                                                      {"images": "/img", "min_area": "10"})
    for bad in ("nope:/x", "voc", "voc:/x,split"):
        with pytest.raises(ValueError):
            DataSpec.parse(bad)


# --------------------------------------------------------------------------- crop pipeline


def test_crop_pipeline_without_augmentation_reproduces_the_official_network_input():
    case = json.loads((FIX / "voc" / "case.json").read_text())
    objects = voc_png("SegmentationObject")
    image = np.array(Image.open(DATA / "voc2012/JPEGImages" / f"{VOC_ID}.jpg").convert("RGB"))
    mask = objects == case["instance_id"]
    s = crop_sample(image.astype(np.float32), mask, objects == 255)
    assert list(s.crop_box) == case["crop_box_xyxy_inclusive"]
    c = case["clicks_512_xy"]
    assert s.clicks.tolist() == [c["inside"], c["outside_left_top"], c["outside_left_bottom"],
                                 c["outside_right_top"], c["outside_right_bottom"]]
    np.testing.assert_allclose(s.x, np.load(FIX / "voc" / "input.npz")["x"][0], rtol=0,
                               atol=1e-3)
    assert s.gt.min() >= 0 and s.gt.max() <= 1 and 0 < (s.gt > 0.5).mean() < 1
    assert s.void.max() > 0.5  # VOC object boundaries are void


def test_stage1_crop_has_an_empty_inside_channel_and_the_same_box_channel():
    objects = voc_png("SegmentationObject")
    image = np.zeros((375, 500, 3), np.float32)
    iog = crop_sample(image, objects == 1, objects == 255)
    stage1 = crop_sample(image, objects == 1, objects == 255, CropSettings(inside=False))
    assert iog.x[3].max() == 255 and not stage1.x[3].any()
    np.testing.assert_array_equal(stage1.x[4], iog.x[4])


def test_reduced_input_size_scales_the_click_geometry():
    objects = voc_png("SegmentationObject")
    image = np.zeros((375, 500, 3), np.float32)
    full = crop_sample(image, objects == 1, objects == 255)
    small = crop_sample(image, objects == 1, objects == 255, CropSettings(size=128))
    assert small.x.shape == (5, 128, 128)
    # the corners sit 10 px from the box at 512 and 10 * 128 / 512 = 2.5 -> 2 px at 128
    np.testing.assert_allclose(small.clicks[1:] * 4, full.clicks[1:], atol=12)


def test_hflip_mirrors_and_scale_rotate_follows_the_rotation_formula():
    h, w = 120, 160
    mask = np.zeros((h, w), bool)
    mask[30:50, 100:130] = True
    (flipped,) = hflip(mask)
    np.testing.assert_array_equal(flipped[:, ::-1], mask)
    image = np.zeros((h, w, 3), np.float32)
    _, (same,) = scale_rotate(image, (mask,), 0.0, 1.0)
    np.testing.assert_array_equal(same, mask)
    angle, scale = 30.0, 1.2
    _, (rot,) = scale_rotate(image, (mask,), angle, scale)
    ys, xs = np.nonzero(mask)
    c = np.array([xs.mean() - w / 2, ys.mean() - h / 2])
    a = np.deg2rad(angle)  # counter-clockwise as displayed (y points down)
    expected = scale * np.array([c[0] * np.cos(a) + c[1] * np.sin(a),
                                 -c[0] * np.sin(a) + c[1] * np.cos(a)]) + [w / 2, h / 2]
    ys, xs = np.nonzero(rot)
    np.testing.assert_allclose([xs.mean(), ys.mean()], expected, atol=1.0)
    assert abs(rot.sum() / mask.sum() - scale**2) < 0.1


def test_augmentation_is_a_function_of_the_generator_and_keeps_the_object():
    objects = voc_png("SegmentationObject")
    image = np.array(Image.open(DATA / "voc2012/JPEGImages" / f"{VOC_ID}.jpg"), np.float32)
    mask, void = objects == 1, objects == 255
    a = augment(image, mask, void, np.random.default_rng(3))
    b = augment(image, mask, void, np.random.default_rng(3))
    c = augment(image, mask, void, np.random.default_rng(4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])
    assert a[1].any() and not (a[1] & a[2]).any()
    ratio = a[1].sum() / mask.sum()
    assert 0.75**2 - 0.05 < ratio < 1.25**2 + 0.05


def test_dataset_samples_repeat_per_epoch_seed_and_differ_between_epochs():
    dataset = open_dataset(f"folder:{DATA}/coco_mval,images_dir=img,masks_dir=gt")
    ds = CropDataset(dataset, dataset.refs()[:3], CropSettings(size=128), AugmentSettings(),
                     seed=5)
    first = ds[1]["x"]
    assert first.shape == (5, 128, 128)
    assert np.array_equal(ds[1]["x"], first)
    ds.set_epoch(1)
    assert not np.array_equal(ds[1]["x"], first)


def test_epoch_batches_are_a_seeded_permutation_without_singletons():
    b0 = epoch_batches(11, 5, seed=1, epoch=0)
    assert [len(b) for b in b0] == [5, 5]  # the last single sample is dropped (BatchNorm)
    assert len({i for b in b0 for i in b}) == 10
    assert b0 == epoch_batches(11, 5, seed=1, epoch=0)
    assert b0 != epoch_batches(11, 5, seed=1, epoch=1)
    assert [len(b) for b in epoch_batches(12, 5, seed=1, epoch=0)] == [5, 5, 2]
