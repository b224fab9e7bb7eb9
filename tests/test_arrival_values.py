"""Reading the identifying values of an arriving instance (worklist.arrival.text_of): undecoded
ASCII values are read as they came, everything else through pydicom and its character sets."""

from __future__ import annotations

from io import BytesIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag
from pynetdicom.dsutils import decode

from worklist.arrival import instance_from_dataset, text_of


def received(ds: Dataset) -> Dataset:
    """`ds` as the SCP gets it: encoded (explicit VR little endian) and decoded again, raw."""
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return decode(BytesIO(out.getvalue()), False, True)


def test_ascii_values_are_read_as_they_came():
    ds = Dataset()
    ds.SOPInstanceUID, ds.StudyInstanceUID = "1.2.3.4", "1.2.3"  # UI: padded with NUL to even length
    ds.AccessionNumber, ds.Modality, ds.SeriesNumber, ds.StudyDate = "ACC7", "CT", "12", "20261127"
    ds.RetrieveAETitle = ["PACS1", "PACS2"]
    arrived = received(ds)
    assert isinstance(arrived.get_item("SOPInstanceUID"), RawDataElement)
    assert text_of(arrived, "SOPInstanceUID") == "1.2.3.4"  # no NUL padding left
    assert text_of(arrived, "AccessionNumber") == "ACC7"
    assert text_of(arrived, "RetrieveAETitle") == "PACS1\\PACS2"
    assert text_of(arrived, "PatientID") == ""
    arrived[0x00080054] = RawDataElement(Tag(0x00080054), "AE", 14, b"PACS1 \\ PACS2  ", 0, False, True)
    assert text_of(arrived, "RetrieveAETitle") == "PACS1\\PACS2"  # each value without its padding
    instance = instance_from_dataset(arrived)
    assert (instance.sop_instance_uid, instance.modality, instance.series_number) == ("1.2.3.4", "CT", 12)
    assert instance.study_date.isoformat() == "2026-11-27" and instance.instance_number is None
    arrived[0x00200013] = RawDataElement(Tag(0x00200013), "IS", 2, b"x ", 0, False, True)
    assert instance_from_dataset(arrived).instance_number is None  # not a number: left out, not refused


def test_other_values_go_through_pydicom_and_the_character_set():
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID, ds.AccessionNumber = "BN-NGUYỄN", "SỐ-1"
    arrived = received(ds)
    assert text_of(arrived, "PatientID") == "BN-NGUYỄN"
    assert text_of(arrived, "AccessionNumber") == "SỐ-1"


def test_values_already_decoded_are_read_from_pydicom():
    ds = Dataset()
    ds.PatientID, ds.RetrieveAETitle, ds.InstanceNumber = " P1 ", ["A", "B"], 3
    assert text_of(ds, "PatientID") == "P1"
    assert text_of(ds, "RetrieveAETitle") == "A\\B"
    assert instance_from_dataset(ds).instance_number == 3
