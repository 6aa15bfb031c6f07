// lrr: being written
