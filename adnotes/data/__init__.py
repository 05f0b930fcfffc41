"""Datasets: the offline adnotes-mini set, MVTec-AD, VisA, CIFAR-10, digits, and their downloads."""
from .datasets import (CIFAR10_CLASSES, DATASETS, IMAGENET_MEAN, IMAGENET_STD, MVTEC_CLASSES,
                       VISA_CLASSES, ADDataset, Record, cifar10_records, digits_records,
                       load_dataset, mvtec_records, visa_records)

__all__ = ["ADDataset", "Record", "load_dataset", "mvtec_records", "visa_records", "cifar10_records",
           "digits_records", "DATASETS", "MVTEC_CLASSES", "VISA_CLASSES", "CIFAR10_CLASSES",
           "IMAGENET_MEAN", "IMAGENET_STD"]
