// encoders: being written
