// threshold crossing: being written
