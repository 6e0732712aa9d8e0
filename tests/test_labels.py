"""Labels come from the model, groups from the data: evaluate and explain on models that are not the default one.

The trained `race5` and `age3` models (tests/zoo.py) and a random 3-label model go through
evaluate -> explain with no traceback and without the word "gender" anywhere in what they print
or write, while the default model's labels keep their fairness tables and responsible-use text.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_tiny_vit, random_image, run_main
from vitgender.errors import ExitCode, UsageError

REFERENCE = Path(__file__).resolve().parent.parent / "vitgender" / "reference" / "utkface-val-50"
GENDER = re.compile(r"\bgender\b", re.IGNORECASE)  # the word, not the tool's name


def assert_no_gender(*texts: str) -> None:
    for text in texts:
        found = GENDER.search(text)
        assert found is None, text[max(0, found.start() - 200) : found.end() + 200]


def evaluate_then_explain(
    monkeypatch, capsys, tmp_path: Path, model: Path, data: Path, images: Path, *extra: str
) -> tuple[dict, str]:
    """`evaluate` (JSON, HTML, --explain 1) then `explain --min-confidence`; both exit 0 without "gender"."""
    report, page = tmp_path / "eval.json", tmp_path / "eval.html"
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "evaluate",
        str(model),
        "--data",
        str(data),
        "--json",
        str(report),
        "--html",
        str(page),
        "--explain",
        "1",
        *extra,
    )
    assert code == ExitCode.OK, err
    sheet = tmp_path / "explained"
    code2, out2, err2 = run_main(
        monkeypatch,
        capsys,
        "explain",
        str(images),
        "--model",
        str(model),
        "--out",
        str(sheet),
        "--min-confidence",
        "0.3",
        *extra,
    )
    assert code2 == ExitCode.OK, err2
    html = (sheet / "index.html").read_text()
    assert_no_gender(out, err, report.read_text(), page.read_text(), out2, err2, html)
    assert "Traceback" not in err + err2
    return json.loads(report.read_text()), html


def wrong_answers(model: Path, images: list[Path], expected: list[str]) -> int:
    import vitgender

    answers = vitgender.load_classifier(model).classify([str(p) for p in images])
    return sum(a[0]["label"] != e for a, e in zip(answers, expected, strict=False))


@pytest.fixture(scope="module")
def race5_faces(race5_model, tmp_path_factory) -> Path:
    from zoo import held_out_folder

    return held_out_folder("race5", tmp_path_factory.mktemp("race5") / "faces", 4)


@pytest.mark.slow
def test_race5_class_folders(race5_model, race5_faces, tmp_path, monkeypatch, capsys):
    report, sheet = evaluate_then_explain(monkeypatch, capsys, tmp_path, race5_model, race5_faces, race5_faces)
    assert list(report["groups"]) == ["label"]  # per label; no group tables unless asked for
    assert {r["group"]["label"] for r in report["groups"]["label"]} == {"White", "Black", "Asian", "Indian", "Other"}
    assert report["data"]["labels"]["kind"] == "folders" and report["task"]["responsible_use"] is None
    assert report["explain"]["keys"] == ["label"] and len(report["explain"]["cells"]) == 5
    faces = sorted(race5_faces.rglob("*.jpg"))
    wrong = wrong_answers(race5_model, faces, [p.parent.name for p in faces])
    assert wrong > 0 and sheet.count("wrong (expected") == wrong  # every wrong answer flagged, by its folder


@pytest.mark.slow
def test_race5_flat_utkface_folder_labels_by_the_race_field(race5_model, race5_faces, tmp_path, monkeypatch, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in race5_faces.rglob("*.jpg"):
        shutil.copyfile(path, flat / path.name)
    report, sheet = evaluate_then_explain(
        monkeypatch, capsys, tmp_path, race5_model, flat, flat, "--label-field", "race"
    )
    assert report["data"]["labels"]["field"] == "race"
    assert report["data"]["labels"]["mapping"] == {
        "0": "White",
        "1": "Black",
        "2": "Asian",
        "3": "Indian",
        "4": "Other",
    }
    assert report["overall"]["n"] == 20
    faces = sorted(flat.iterdir())
    races = ["White", "Black", "Asian", "Indian", "Other"]
    wrong = wrong_answers(race5_model, faces, [races[int(p.name.split("_")[2])] for p in faces])
    assert sheet.count("wrong (expected") == wrong
    code, out, _ = run_main(monkeypatch, capsys, "evaluate", str(race5_model), "--data", str(flat))
    assert code == ExitCode.OK and "race field (0 -> White" in out  # found without --label-field, and shown
    code, _, err = run_main(
        monkeypatch, capsys, "evaluate", str(race5_model), "--data", str(flat), "--group-by", "age,race+label"
    )
    assert code == ExitCode.OK, err


@pytest.mark.slow
def test_age3_class_folders_and_ages_binned_by_its_labels(age3_model, tmp_path, monkeypatch, capsys):
    from zoo import held_out_folder

    faces = held_out_folder("age3", tmp_path / "faces", 4)
    renamed = tmp_path / "renamed"  # "50+" as a folder name is fine; keep the labels exactly
    shutil.copytree(faces, renamed)
    report, _ = evaluate_then_explain(monkeypatch, capsys, tmp_path, age3_model, renamed, renamed)
    assert {r["group"]["label"] for r in report["groups"]["label"]} == {"0-19", "20-49", "50+"}
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in faces.rglob("*.jpg"):
        shutil.copyfile(path, flat / path.name)
    code, out, err = run_main(
        monkeypatch, capsys, "evaluate", str(age3_model), "--data", str(flat), "--json", str(tmp_path / "flat.json")
    )
    assert code == ExitCode.OK, err
    flat_report = json.loads((tmp_path / "flat.json").read_text())
    assert flat_report["data"]["labels"]["field"] == "age" and flat_report["accuracy"] == report["accuracy"]
    assert "age 50+ -> 50+" in out


@pytest.fixture(scope="module")
def three_labels(tmp_path_factory) -> Path:
    return make_tiny_vit(tmp_path_factory.mktemp("three") / "tiny3", labels=("cat", "dog", "bird"))


def test_random_three_label_model(three_labels, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    for i, label in enumerate(("cat", "dog", "bird") * 2):
        (data / label).mkdir(parents=True, exist_ok=True)
        random_image(i).save(data / label / f"{i}.png")
    report, _ = evaluate_then_explain(monkeypatch, capsys, tmp_path, three_labels, data, data)
    assert list(report["per_class"]) == ["cat", "dog", "bird"] and list(report["groups"]) == ["label"]
    assert report["task"]["text"] == "image classifier with 3 labels: cat, dog, bird"


def test_bad_label_and_group_fields_are_one_line(three_labels, tmp_path, monkeypatch, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copyfile(next(REFERENCE.iterdir()), flat / next(REFERENCE.iterdir()).name)
    classes = tmp_path / "classes"
    (classes / "cat").mkdir(parents=True)
    random_image(0).save(classes / "cat" / "a.png")
    for args, words in (
        ((str(flat),), "pass --label-field FIELD"),
        ((str(flat), "--label-field", "hair"), "UTKFace file names carry"),
        ((str(classes), "--label-field", "race"), "class folders"),
        ((str(classes), "--group-by", "race"), "not a field of this data"),
        ((str(classes), "--explain-method", "rollout"), "only with --explain N"),
    ):
        code, _, err = run_main(monkeypatch, capsys, "evaluate", str(three_labels), "--data", *args)
        assert code == ExitCode.USAGE and words in err and err.count("\n") == 1, (args, err)


def test_csv_columns_are_groups_and_the_label_column_is_chosen(three_labels, tmp_path, monkeypatch, capsys):
    rows = []
    for i in range(6):
        random_image(i).save(tmp_path / f"{i}.png")
        rows.append(
            {
                "path": f"{i}.png",
                "label": "x",
                "animal": ("cat", "dog", "bird")[i % 3],
                "site": "north" if i < 3 else "south",
                "age": str(20 + 30 * (i % 2)),
            }
        )
    table = tmp_path / "data.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report_path = tmp_path / "r.json"
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "evaluate",
        str(three_labels),
        "--data",
        str(table),
        "--label-field",
        "animal",
        "--group-by",
        "site,age,site+label",
        "--json",
        str(report_path),
    )
    assert code == ExitCode.OK, err
    report = json.loads(report_path.read_text())
    assert list(report["groups"]) == ["label", "site", "age_bucket", "sitexlabel"]
    assert [r["n"] for r in report["groups"]["site"]] == [3, 3]
    assert report["data"]["labels"] == {
        "kind": "csv",
        "field": "animal",
        "mapping": {},
        "text": "labels: the CSV column 'animal'",
    }
    code, _, err = run_main(
        monkeypatch, capsys, "evaluate", str(three_labels), "--data", str(table), "--label-field", "colour"
    )
    assert code == ExitCode.USAGE and "no such column" in err


def test_default_labels_keep_their_tables_and_responsible_use(tiny_model, tmp_path, monkeypatch, capsys):
    report_path, page = tmp_path / "r.json", tmp_path / "r.html"
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "evaluate",
        str(tiny_model),
        "--data",
        str(REFERENCE),
        "--json",
        str(report_path),
        "--html",
        str(page),
    )
    assert code == ExitCode.OK, err
    report = json.loads(report_path.read_text())
    assert list(report["groups"]) == ["gender", "race", "genderxrace", "age_bucket", "racexgenderxage_bucket"]
    assert "perceived binary gender presentation" in page.read_text()
    assert report["data"]["labels"]["field"] == "gender"


def test_expected_labels_come_from_csv_folders_or_the_chosen_field(tmp_path):
    from vitgender.data import ExpectedLabels

    utk = "30_1_2_20170117131018041.jpg.chip.jpg"  # female, Asian, 30
    races = ("White", "Black", "Asian", "Indian", "Other")
    assert ExpectedLabels(races)(f"x/{utk}") == "Asian"  # the field whose values are the model's labels
    assert ExpectedLabels(("female", "male"))(f"x/{utk}") == "female"
    assert ExpectedLabels(("0-19", "20-49", "50+"))(f"x/{utk}") == "20-49"
    assert ExpectedLabels(races)(f"Black/{utk}") == "Black"  # a class folder wins over the name
    assert ExpectedLabels(races, label_field="race")(f"Black/{utk}") == "Asian"  # unless a field is chosen
    assert ExpectedLabels(("cat", "dog"))(f"x/{utk}") is None and ExpectedLabels(("cat", "dog"))("cat/a.png") == "cat"
    table = tmp_path / "labels.csv"
    table.write_text("path,label,kind\na.png,cat,dog\n")
    assert ExpectedLabels(("cat", "dog"), csv_path=table)(str(tmp_path / "a.png")) == "cat"
    assert ExpectedLabels(("cat", "dog"), csv_path=table, label_field="kind")(str(tmp_path / "a.png")) == "dog"
    with pytest.raises(UsageError, match="no such column"):
        ExpectedLabels(("cat", "dog"), csv_path=table, label_field="colour")
    with pytest.raises(UsageError, match="UTKFace file names carry"):
        ExpectedLabels(("cat", "dog"), label_field="colour")


def test_group_by_parsing():
    from vitgender.evaluation.metrics import default_groupings, parse_group_by

    fields = ["age", "age_bucket", "gender", "race"]
    assert parse_group_by("race, age,race+label", fields) == (("race",), ("age_bucket",), ("race", "label"))
    assert default_groupings(("White", "Black"), fields) == ()
    assert default_groupings(("Male", "Female"), fields)[2] == ("gender", "race")
    with pytest.raises(UsageError, match="it has: label"):
        parse_group_by("race", [])
