// classifier: being written
