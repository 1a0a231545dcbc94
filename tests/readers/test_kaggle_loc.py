"""Kaggle LOC CSV reader: agrees with the XMLs, places train/val images, reports bad rows."""

from __future__ import annotations

from pathlib import Path

from boxmask.readers import open_reader, stable_box_id
from boxmask.readers.ilsvrc import ILSVRCReader
from boxmask.readers.kaggle_loc import KaggleLOCReader
from boxmask.records import ErrorRecord, ImageRecord

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "samples" / "ilsvrc_loc"
VAL_CSV = SAMPLE / "LOC_val_solution_excerpt.csv"
FIXTURES = REPO / "tests" / "data" / "readers" / "kaggle"


def test_val_csv_gives_the_same_boxes_as_the_val_xmls():
    from_csv = {r.image_id: r for r in open_reader("kaggle-loc", VAL_CSV)}
    from_xml = {r.image_id: r for r in ILSVRCReader(SAMPLE, split="val")}
    assert len(from_csv) == 10 and set(from_csv) == set(from_xml)
    for image_id, rec in from_csv.items():
        xml_rec = from_xml[image_id]
        assert [(b.box_id, b.label, b.index, b.xyxy) for b in rec.boxes] == [
            (b.box_id, b.label, b.index, b.xyxy) for b in xml_rec.boxes]
        assert rec.group == xml_rec.group == "n01440764"
        assert rec.image_path == xml_rec.image_path


def test_csv_values_count_from_zero_like_the_xml():
    # First row: ILSVRC2012_val_00010306,n01440764 60 149 316 338
    first = next(iter(KaggleLOCReader(VAL_CSV)))
    assert first.image_id == "ILSVRC2012_val_00010306"
    assert first.boxes[0].xyxy == (60, 149, 316, 338)
    assert next(iter(KaggleLOCReader(VAL_CSV, origin=1))).boxes[0].xyxy == (59, 148, 315, 337)
    assert first.boxes[0].box_id == stable_box_id("ILSVRC2012_val_00010306", 0)
    assert first.width is None and first.height is None  # the CSV declares no size


def test_val_images_found_in_class_folders_when_not_flat():
    reader = KaggleLOCReader(VAL_CSV)
    assert reader.images_root == SAMPLE / "Data" / "CLS-LOC"
    for rec in reader:
        assert rec.image_path == f"val/n01440764/{rec.image_id}.JPEG"
        assert (reader.images_root / rec.image_path).is_file()


def test_val_images_use_the_flat_kaggle_layout_when_present(tmp_path):
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text(VAL_CSV.read_text())
    val = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    val.mkdir(parents=True)
    (val / "ILSVRC2012_val_00010306.JPEG").write_bytes(b"")
    reader = KaggleLOCReader(csv)
    assert reader.images_root == tmp_path / "ILSVRC" / "Data" / "CLS-LOC"
    paths = [r.image_path for r in reader]
    assert paths[0] == "val/ILSVRC2012_val_00010306.JPEG"
    # Where neither file exists the flat Kaggle path is reported.
    assert paths[1] == "val/ILSVRC2012_val_00009396.JPEG"


def test_train_ids_map_to_their_class_folder_and_match_the_xml():
    reader = KaggleLOCReader(FIXTURES / "LOC_train_solution_from_xml.csv",
                             images_root=SAMPLE / "Data" / "CLS-LOC")
    records = list(reader)
    assert [len(r.boxes) for r in records] == [1, 5]
    xml = {r.image_id: r for r in ILSVRCReader(SAMPLE, split="train")}
    for rec in records:
        assert isinstance(rec, ImageRecord)
        assert rec.image_path == f"train/n01440764/{rec.image_id}.JPEG"
        assert (reader.images_root / rec.image_path).is_file()
        assert [b.xyxy for b in rec.boxes] == [b.xyxy for b in xml[rec.image_id].boxes]


def test_labels_come_from_the_mapping_next_to_the_csv():
    labels = KaggleLOCReader(VAL_CSV).labels()
    assert len(labels) == 10 and labels.name("n01440764") == "tench"


def test_bad_rows_become_errors_and_reading_goes_on():
    items = list(KaggleLOCReader(FIXTURES / "bad_rows.csv"))
    errors = [i for i in items if isinstance(i, ErrorRecord)]
    records = [i for i in items if isinstance(i, ImageRecord)]
    assert all(e.stage == "read" for e in errors)
    reasons = [e.reason for e in errors]
    assert "not groups of 5" in reasons[0] and errors[0].image_id == "n01440764_1"
    assert errors[1].box_id == stable_box_id("n01440764_2", 1) and "'x'" in reasons[1]
    assert "not a safe file name" in reasons[2]
    assert "neither a train id" in reasons[3]
    assert "'../x'" in reasons[4] and errors[4].image_id == "ILSVRC2012_val_00000001"
    assert "fields" in reasons[5] and errors[5].location.endswith("bad_rows.csv:7")
    assert len(errors) == 6
    # The second row keeps its good first box.
    (rec,) = records
    assert rec.image_id == "n01440764_2" and [b.xyxy for b in rec.boxes] == [(1, 2, 3, 4)]
