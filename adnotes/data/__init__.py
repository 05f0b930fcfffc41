"""Datasets: the offline adnotes-mini set, MVTec-AD, VisA, Real-IAD, CIFAR-10, digits, and their downloads."""
from .datasets import (CIFAR10_CLASSES, DATASETS, FOLDERS, IMAGENET_MEAN, IMAGENET_STD, MINI_DATASETS,
                       MVTEC_CLASSES, VISA_CLASSES, ADDataset, Record, cifar10_records, digits_records,
                       load_dataset, mvtec_records, visa_records)
from .realiad import REALIAD_CLASSES, realiad_records, sample_scores

__all__ = ["ADDataset", "Record", "load_dataset", "mvtec_records", "visa_records", "realiad_records",
           "cifar10_records", "digits_records", "sample_scores", "DATASETS", "MINI_DATASETS", "FOLDERS",
           "MVTEC_CLASSES", "VISA_CLASSES", "REALIAD_CLASSES", "CIFAR10_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD"]
