"""Open Images box CSV reader: real 21- and 13-column rows, grouping, bad values, streaming."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from boxmask.boxes import from_normalized
from boxmask.readers import open_reader, stable_box_id
from boxmask.readers.openimages import OpenImagesReader
from boxmask.records import ErrorRecord, ImageRecord

REPO = Path(__file__).resolve().parents[2]
REAL = REPO / "tests" / "data" / "openimages"
FIXTURES = REPO / "tests" / "data" / "readers" / "openimages"
BBOX_21 = REAL / "oidv6-train-annotations-bbox_excerpt.csv"
BBOX_13 = FIXTURES / "oidv6-train-annotations-bbox_13col.csv"


def test_real_21_column_rows_make_one_record_with_three_boxes():
    items = list(open_reader("openimages", BBOX_21))
    (rec,) = items
    assert isinstance(rec, ImageRecord)
    assert rec.image_id == "000002b66c9c498e" and rec.image_path == "000002b66c9c498e.jpg"
    # Row 1: XMin 0.012500, XMax 0.195312, YMin 0.148438, YMax 0.587500 (CSV column order).
    assert rec.boxes[0].xyxy_norm == (0.0125, 0.148438, 0.195312, 0.5875)
    assert rec.boxes[0].xyxy is None
    assert [b.box_id for b in rec.boxes] == [stable_box_id(rec.image_id, k) for k in range(3)]
    assert [b.label for b in rec.boxes] == ["/m/01g317"] * 3
    assert rec.boxes[0].attrs == {"Source": "xclick", "Confidence": 1, "IsOccluded": 0,
                                  "IsTruncated": 1, "IsGroupOf": 0, "IsDepiction": 0,
                                  "IsInside": 0}
    assert rec.boxes[2].attrs["IsOccluded"] == 1


def test_real_13_column_row_and_headerless_class_list():
    reader = OpenImagesReader(BBOX_13,
                              labels_file=FIXTURES / "class-descriptions-boxable_no-header.csv")
    (rec,) = list(reader)
    (box,) = rec.boxes
    assert box.xyxy_norm == (0.022673031, 0.07103825, 0.9642005, 0.80054647)
    assert box.label == "/m/0cmf2" and box.attrs["IsGroupOf"] == 0
    labels = reader.labels()
    assert labels.ids == ["/m/0cmf2"] and labels.name("/m/0cmf2") == "Airplane"
    # Resolved later against the real image size, e.g. 1024x683:
    assert from_normalized(*box.xyxy_norm, 1024, 683) == (23, 48, 987, 546)


def test_class_list_with_header_gives_names_and_order():
    classes = REAL / "class-descriptions-boxable_with-header.csv"
    reader = OpenImagesReader(BBOX_21, labels_file=classes)
    labels = reader.labels()
    assert len(labels) == 601 and labels.ids[0] == "/m/011k07"
    assert labels.name("/m/01g317") == "Person"


def test_default_images_root_is_the_images_folder_when_present(tmp_path):
    csv = tmp_path / "boxes.csv"
    csv.write_text(BBOX_13.read_text())
    assert OpenImagesReader(csv).images_root == tmp_path
    (tmp_path / "images").mkdir()
    assert OpenImagesReader(csv).images_root == tmp_path / "images"


def test_ungrouped_csv_is_sorted_by_image_id_and_loses_no_row():
    reader = OpenImagesReader(FIXTURES / "ungrouped.csv")
    assert "grouped_by_image_id" not in reader.describe()
    items = list(reader)
    assert reader.grouped is False and reader.describe()["grouped_by_image_id"] is False
    a, b, c = "a" * 16, "b" * 16, "c" * 16
    # Rows: a a b a c b (lines 2-7) -> records in ImageID order, boxes in file order.
    assert [(type(i).__name__, i.image_id, len(i.boxes)) for i in items] == [
        ("ImageRecord", a, 3), ("ImageRecord", b, 2), ("ImageRecord", c, 1)]
    assert [i.location.rsplit(":", 1)[1] for i in items] == ["2", "4", "6"]
    assert [box.index for box in items[0].boxes] == [0, 1, 2]
    assert [box.box_id for box in items[1].boxes] == [stable_box_id(b, 0), stable_box_id(b, 1)]


def test_grouped_but_unsorted_csv_is_fine(tmp_path):
    lines = (FIXTURES / "ungrouped.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    by_id: dict[str, list[str]] = {}
    for row in rows:
        by_id.setdefault(row.split(",")[0], []).append(row)
    csv = tmp_path / "grouped.csv"
    csv.write_text("\n".join([header] + by_id["c" * 16] + by_id["a" * 16] + by_id["b" * 16]))
    items = list(OpenImagesReader(csv))
    assert [(type(i).__name__, i.image_id, len(i.boxes)) for i in items] == [
        ("ImageRecord", "c" * 16, 1), ("ImageRecord", "a" * 16, 3), ("ImageRecord", "b" * 16, 2)]


def test_bad_values_are_per_box_errors_and_unsafe_ids_are_refused():
    items = list(OpenImagesReader(FIXTURES / "bad_values.csv"))
    d, e, f = "d" * 16, "e" * 16, "f" * 16
    errors = [i for i in items if isinstance(i, ErrorRecord)]
    records = [i for i in items if isinstance(i, ImageRecord)]
    assert [r.image_id for r in records] == [d, f]
    assert [b.index for b in records[0].boxes] == [0]
    assert [(x.image_id, x.box_id) for x in errors] == [
        (d, stable_box_id(d, 1)), (d, stable_box_id(d, 2)), (None, None), (e, stable_box_id(e, 0))]
    assert "XMin 'abc' is not a number" in errors[0].reason
    assert "YMax 1.5 is outside [0, 1]" in errors[1].reason
    assert "not a safe file name" in errors[2].reason and "../../etc/passwd" in errors[2].reason
    assert "XMax -0.1 is outside" in errors[3].reason


def test_wrong_header_is_rejected(tmp_path):
    csv = tmp_path / "not_boxes.csv"
    csv.write_text((REAL / "train-annotations-human-imagelabels-boxable_excerpt.csv").read_text())
    with pytest.raises(ValueError, match="XMin"):
        list(OpenImagesReader(csv))


def test_large_csv_is_streamed_with_bounded_memory(tmp_path):
    # 50k rows (7.7 MB); holding them as csv rows would take ~56 MB (tracemalloc). Not 200k:
    # tracemalloc makes each row about 7x slower (~2 s here for 50k instead of ~0.5 s).
    header, row = BBOX_21.read_text().splitlines()[:2]
    tail = row.split(",", 1)[1]
    n_rows, per_image = 50_000, 4
    csv = tmp_path / "big.csv"
    with open(csv, "w") as f:
        f.write(header + "\n")
        f.writelines(f"{i // per_image:016x},{tail}\n" for i in range(n_rows))
    size = csv.stat().st_size
    tracemalloc.start()
    try:
        n_records = n_boxes = 0
        for item in OpenImagesReader(csv):
            n_records += 1
            n_boxes += len(item.boxes)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (n_records, n_boxes) == (n_rows // per_image, n_rows)
    assert peak < size / 8, (peak, size)


def test_a_late_repeat_among_many_unsorted_images_is_sorted_in_bounded_chunks(tmp_path):
    # Descending ImageIDs: grouped but unsorted, so every new id is looked up among the
    # finished ones (more than the 4096 kept before they are packed into a sorted array); two
    # rows at the end repeat ids whose rows ended long ago.
    header, row = BBOX_21.read_text().splitlines()[:2]
    tail = row.split(",", 1)[1]
    ids = [f"{i:016x}" for i in range(10_000, 0, -1)]
    csv = tmp_path / "descending.csv"
    csv.write_text("\n".join([header] + [f"{i},{tail}" for i in ids]
                             + [f"{ids[7]},{tail}", f"{ids[-1]},{tail}"]) + "\n")
    reader = OpenImagesReader(csv)
    reader.sort_chunk_rows = 1000  # 11 sorted chunks on disk, merged
    items = list(reader)
    assert reader.grouped is False
    assert all(isinstance(i, ImageRecord) for i in items)
    assert [i.image_id for i in items] == sorted(ids)
    boxes = {i.image_id: len(i.boxes) for i in items}
    assert boxes[ids[7]] == boxes[ids[-1]] == 2 and sum(boxes.values()) == 10_002
    assert [b.index for b in items[-8].boxes] == [0, 1]  # ids[7]: file order kept


def test_sorting_keeps_memory_bounded_and_reports_bad_rows(tmp_path):
    header, row = BBOX_21.read_text().splitlines()[:2]
    tail = row.split(",", 1)[1]
    n_rows = 30_000
    order = [(i * 7919) % n_rows for i in range(n_rows)]  # a permutation: not grouped
    csv = tmp_path / "shuffled.csv"
    with open(csv, "w") as f:
        f.write(header + "\n")
        f.writelines(f"{i // 3:016x},{tail}\n" for i in order)
        f.write("0000000000000000,too,few\n")
    size = csv.stat().st_size
    reader = OpenImagesReader(csv)
    reader.sort_chunk_rows = 1000
    errors, n_records, n_boxes, ids = [], 0, 0, []
    tracemalloc.start()
    try:
        for item in reader:
            if isinstance(item, ErrorRecord):
                errors.append(item)
            else:
                n_records += 1
                n_boxes += len(item.boxes)
                ids.append(item.image_id)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(errors) == 1 and "row has 3 fields" in errors[0].reason
    assert errors[0].location.endswith(f":{n_rows + 2}")
    assert (n_records, n_boxes) == (n_rows // 3, n_rows) and ids == sorted(set(ids))
    # The whole file as csv rows would take ~8x its size; the sort holds one chunk.
    assert peak < size / 2, (peak, size)


def test_grouping_check_reads_quoted_rows_with_the_csv_module(tmp_path):
    from boxmask.readers.openimages import is_grouped

    header, row = BBOX_21.read_text().splitlines()[:2]
    tail = row.split(",", 1)[1]
    grouped = tmp_path / "quoted.csv"
    grouped.write_text(f"{header}\n\"a,b\",{tail}\n\"a,b\",{tail}\na,{tail}\n")
    assert is_grouped(grouped, 0)  # "a,b" is one ImageID, not "\"a"
    ungrouped = tmp_path / "ungrouped.csv"
    ungrouped.write_text(f"{header}\nb,{tail}\na,{tail}\n\"b\",{tail}\n")
    assert not is_grouped(ungrouped, 0)
